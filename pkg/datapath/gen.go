package datapath

// The BPF object is compiled ahead of time and committed (ft_bpfel.go,
// ft_bpfel.o) so that building and unit-testing flowtrace needs no clang.
// Sources are passed by relative path so the object's BTF line info never
// contains the checkout directory; regeneration is byte-for-byte
// reproducible (verified by compiling twice and comparing hashes).
//
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -go-package datapath -type ft_event_hdr -type ft_tuple -type ft_flow_event -type ft_drop_event -type ft_xlate_event -type ft_mtu_event -type ft_ct -type ft_ct_tuple -type ft_encap -type ft_flow_key -type ft_flow_val -type ft_drop_key -type ft_drop_fold ft ../../bpf/flowtrace.c -- -O2 -g -Wall -Werror -mcpu=v3 -I../../headers -I../../bpf
