// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
//go:build ignore

/* The one flowtrace BPF object: feature headers only. */
#include "ft_vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#include "ft_event.h"
#include "ft_config.h"
#include "ft_maps.h"
#include "ft_parse.h"
#include "ft_ct.h"
#include "ft_mtu.h"
#include "ft_flow.h"
#include "ft_drop.h"

/*
 * Event structs are only used through bpf_ringbuf_reserve, so nothing would
 * put them in BTF; these unused pointers make bpf2go -type able to see them.
 */
const struct ft_flow_event *ft_unused_flow __attribute__((unused));
const struct ft_drop_event *ft_unused_drop __attribute__((unused));
const struct ft_flow_key *ft_unused_key __attribute__((unused));
const struct ft_flow_val *ft_unused_val __attribute__((unused));
const struct ft_xlate_event *ft_unused_xlate __attribute__((unused));
const struct ft_mtu_event *ft_unused_mtu __attribute__((unused));
const struct ft_drop_key *ft_unused_drop_key __attribute__((unused));
const struct ft_drop_fold *ft_unused_drop_fold __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
