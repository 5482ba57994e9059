package decode

// Wire layout of the events written by the BPF programs.
// Keep in sync with bpf/ft_event.h; TestABIMatchesGenerated in pkg/datapath
// compares these numbers with the bpf2go-generated structs.
const (
	// Version is FT_EVENT_VERSION.
	Version = 3

	OffHdrType    = 0
	OffHdrVersion = 1
	OffHdrLen     = 2
	OffHdrCPU     = 4
	OffHdrTsNs    = 8
	HdrSize       = 16

	// Offsets inside struct ft_tuple.
	OffTupleSaddr     = 0
	OffTupleDaddr     = 16
	OffTupleSport     = 32
	OffTupleDport     = 34
	OffTupleEtherType = 36
	OffTupleVLAN      = 38
	OffTupleIPVersion = 40
	OffTupleProto     = 41
	OffTupleTCPFlags  = 42
	OffTupleICMPType  = 43
	OffTupleICMPCode  = 44
	OffTupleStatus    = 45
	TupleSize         = 48

	// Offsets inside struct ft_flow_event.
	OffFlowTuple       = 16
	OffFlowPackets     = 64
	OffFlowBytes       = 72
	OffFlowIfindex     = 80
	OffFlowNetns       = 84
	OffFlowPktLen      = 88
	OffFlowDir         = 92
	OffFlowReason      = 93
	OffFlowRevTCPFlags = 94
	OffFlowCT          = 96
	OffFlowEncap       = 136
	OffFlowRevPackets  = 176
	OffFlowRevBytes    = 184
	FlowSize           = 192

	// Offsets inside struct ft_drop_event.
	OffDropTuple    = 16
	OffDropLocation = 64
	OffDropFirstNs  = 72
	OffDropLastNs   = 80
	OffDropReason   = 88
	OffDropIfindex  = 92
	OffDropSkbIif   = 96
	OffDropNetns    = 100
	OffDropPktLen   = 104
	OffDropCount    = 108
	OffDropCT       = 112
	DropSize        = 152

	// Offsets inside struct ft_ct_tuple.
	OffCTTupleSaddr = 0
	OffCTTupleDaddr = 16
	OffCTTupleSport = 32
	OffCTTupleDport = 34
	CTTupleSize     = 36

	// Offsets inside struct ft_ct.
	OffCTOrig      = 0
	OffCTFlags     = 36
	OffCTIPVersion = 37
	CTSize         = 40

	// Offsets inside struct ft_encap.
	OffEncapSaddr     = 0
	OffEncapDaddr     = 16
	OffEncapVNI       = 32
	OffEncapDport     = 36
	OffEncapIPVersion = 38
	EncapSize         = 40

	// Offsets inside struct ft_xlate_event.
	OffXlateTuple   = 16
	OffXlateCT      = 64
	OffXlateXlat    = 104
	OffXlateIfindex = 140
	OffXlateNetns   = 144
	OffXlateDir     = 148
	XlateSize       = 152

	// Offsets inside struct ft_mtu_event.
	OffMTUTuple         = 16
	OffMTUEmb           = 64
	OffMTUEmbProto      = 100
	OffMTUEmbIPVersion  = 101
	OffMTUKind          = 102
	OffMTUDir           = 103
	OffMTUPktLen        = 104
	OffMTUMTU           = 108
	OffMTUIfindex       = 112
	OffMTUEgressIfindex = 116
	OffMTUNetns         = 120
	MTUSize             = 128
)

// Conntrack flags (ft_ct.flags). Keep in sync with bpf/ft_event.h.
const (
	CTKnown     CTFlags = 0x01
	CTReply     CTFlags = 0x02
	CTDNAT      CTFlags = 0x04
	CTSNAT      CTFlags = 0x08
	CTViaNfct   CTFlags = 0x10
	CTViaLookup CTFlags = 0x20
	CTViaRev    CTFlags = 0x40
)

// Parse status values (enum ft_parse_status). Keep in sync with bpf/ft_event.h.
const (
	ParseOK        = 0
	ParseNonIP     = 1
	ParseTruncated = 2
	ParseMalformed = 3
)

// TCP flag bits as on the wire. Keep in sync with bpf/ft_event.h.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPPsh = 0x08
	TCPAck = 0x10
)
