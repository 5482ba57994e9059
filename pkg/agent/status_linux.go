package agent

import (
	"context"
	"sort"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// Status implements server.StatusSource: the agent's part of ServerStatus.
func (a *Agent) Status(context.Context) *flowtracev1.ServerStatusResponse {
	st := &flowtracev1.ServerStatusResponse{
		Version:  a.cfg.Version,
		Uptime:   durationpb.New(time.Since(a.start)),
		NodeName: a.cfg.NodeName,
		Features: &flowtracev1.DatapathFeatures{
			DropHook:        a.dp.Features().DropHook,
			ConntrackNfct:   a.dp.Features().ConntrackNfct,
			ConntrackLookup: a.dp.Features().ConntrackLookup,
			MtuCheck:        a.dp.Features().MTUCheck,
			FlowCache:       a.dp.Features().FlowCache,
			DropMemo:        a.dp.Features().DropMemo,
			DropDirect:      a.dp.Features().DropDirect,
		},
	}
	if d := a.dp.Features().FirstReportDelay; d > 0 {
		st.Features.FirstReportDelay = durationpb.New(d)
	}
	if a.reasons != nil {
		st.Features.DropReasons = uint32(a.reasons.Len())
	}
	if total, _, err := a.dp.Lost(); err == nil {
		st.LostEvents = append(st.LostEvents, &flowtracev1.LostEventsCount{
			Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_KERNEL_RING_BUFFER, Count: total})
	}
	st.LostEvents = append(st.LostEvents, &flowtracev1.LostEventsCount{
		Source: flowtracev1.LostEventsSource_LOST_EVENTS_SOURCE_AGENT_QUEUE, Count: a.queueLost.Load()})
	ft := a.dp.FlowTable()
	st.FlowTable = &flowtracev1.KernelFlowTable{Capacity: uint64(ft.Capacity)}
	if !ft.WalkedAt.IsZero() {
		st.FlowTable.Used, st.FlowTable.WalkedAt = uint64(ft.Used), timestamppb.New(ft.WalkedAt)
	}
	if c, err := a.dp.Stats(); err == nil {
		st.DatapathCounters = c
		st.FlowTable.Full = c["flow_table_full"]
		for _, s := range statLosses {
			st.LostEvents = append(st.LostEvents, &flowtracev1.LostEventsCount{Source: s.src, Count: c[s.counter]})
		}
	}

	a.mu.Lock()
	modes := map[string]bool{}
	for idx, l := range a.links {
		st.Interfaces = append(st.Interfaces, &flowtracev1.AttachedInterface{
			Name: l.link.Name, Index: uint32(idx), Mode: string(l.mode), Kind: string(l.link.Kind), PeerNetns: l.peerName,
		})
		modes[string(l.mode)] = true
	}
	a.mu.Unlock()
	sort.Slice(st.Interfaces, func(i, j int) bool { return st.Interfaces[i].Index < st.Interfaces[j].Index })
	for m := range modes {
		if st.Features.TcAttach != "" {
			st.Features.TcAttach += "+"
		}
		st.Features.TcAttach += m
	}
	for _, s := range a.ids {
		ok, detail := s.Synced()
		st.IdentitySources = append(st.IdentitySources, &flowtracev1.IdentitySourceStatus{Name: s.Name(), Synced: ok, Detail: detail})
	}
	st.Cost = a.cost()
	return st
}
