package server

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"

	"github.com/flowtrace/flowtrace/pkg/observer"
	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// flowCodec is gRPC's proto codec, except that flow responses, nearly
// every message a server sends, are written by the observer's hand-written
// encoder: the same bytes as proto.Marshal (a test holds it to that) for a
// fraction of the CPU, which was a tenth of the agent's under a drop storm
// with a follower. Everything else, requests included, goes to proto.
type flowCodec struct {
	base  encoding.CodecV2
	flows *observer.ResponseEncoder
}

func newFlowCodec() flowCodec {
	return flowCodec{base: encoding.GetCodecV2(proto.Name), flows: observer.NewResponseEncoder()}
}

// encodedFlowCap fits the encoding of most flows at once (a flow with two
// named pods, a Service and a translation is ~400-600 bytes).
const encodedFlowCap = 768

// encodedHeadroom fits what a response adds around an encoded flow: node
// name, time and the flow's tag and length.
const encodedHeadroom = 96

func (c flowCodec) Marshal(v any) (mem.BufferSlice, error) {
	if e, ok := v.(*observer.EncodedFlow); ok {
		// Called within SendMsg, while e's bytes are valid.
		b, ok := e.AppendResponse(make([]byte, 0, len(e.Flow)+encodedHeadroom))
		if !ok {
			return nil, fmt.Errorf("flow response: node name %q is not valid UTF-8", e.NodeName)
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	if r, ok := v.(*flowtracev1.GetFlowsResponse); ok {
		if b, ok := c.flows.Append(make([]byte, 0, encodedFlowCap), r); ok {
			return mem.BufferSlice{mem.SliceBuffer(b)}, nil
		}
	}
	return c.base.Marshal(v)
}

func (c flowCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.base.Unmarshal(data, v) }

// Name is proto's: clients negotiate the content-subtype "proto" as ever.
func (c flowCodec) Name() string { return c.base.Name() }
