package filters

import (
	"fmt"
	"sort"
	"strings"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// FieldMask keeps only some paths of a Flow. It is compiled once per request
// from the request's field_mask and applied to every flow sent; a nil
// *FieldMask keeps everything.
type FieldMask struct {
	root *maskNode
}

// maskNode is one message level of the mask: the fields to copy, each either
// whole (sub == nil) or partially (sub names the inner fields).
type maskNode struct {
	fields []maskField
}

type maskField struct {
	fd  protoreflect.FieldDescriptor
	sub *maskNode
}

// NewFieldMask compiles paths such as "time", "verdict", "source.pod_name",
// "l4.tcp.flags" against the Flow descriptor. An empty list gives nil (no
// mask). Errors name the bad path and the part of it that is unknown.
func NewFieldMask(paths []string) (*FieldMask, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	type tree struct {
		whole bool
		kids  map[protoreflect.FieldNumber]*tree
		fd    protoreflect.FieldDescriptor
	}
	root := &tree{kids: map[protoreflect.FieldNumber]*tree{}}
	flowDesc := (&flowtracev1.Flow{}).ProtoReflect().Descriptor()
	for _, p := range paths {
		if p == "" {
			return nil, fmt.Errorf("field mask: empty path")
		}
		md := flowDesc
		node := root
		parts := strings.Split(p, ".")
		for i, name := range parts {
			if md == nil {
				return nil, fmt.Errorf("field mask: path %q: %q is not a message, it has no field %q", p, strings.Join(parts[:i], "."), name)
			}
			fd := md.Fields().ByName(protoreflect.Name(name))
			if fd == nil {
				return nil, fmt.Errorf("field mask: path %q: %s has no field %q", p, md.FullName(), name)
			}
			kid := node.kids[fd.Number()]
			if kid == nil {
				kid = &tree{kids: map[protoreflect.FieldNumber]*tree{}, fd: fd}
				node.kids[fd.Number()] = kid
			}
			node = kid
			md = nil
			if fd.Kind() == protoreflect.MessageKind && fd.Cardinality() != protoreflect.Repeated {
				md = fd.Message()
			}
		}
		node.whole = true
	}
	var compile func(t *tree) *maskNode
	compile = func(t *tree) *maskNode {
		n := &maskNode{}
		nums := make([]int, 0, len(t.kids))
		for num := range t.kids {
			nums = append(nums, int(num))
		}
		sort.Ints(nums)
		for _, num := range nums {
			k := t.kids[protoreflect.FieldNumber(num)]
			mf := maskField{fd: k.fd}
			// A path naming the whole field wins over paths inside it.
			if !k.whole {
				mf.sub = compile(k)
			}
			n.fields = append(n.fields, mf)
		}
		return n
	}
	return &FieldMask{root: compile(root)}, nil
}

// Apply returns a new Flow holding only the masked fields of f; f itself is
// not modified (it may be shared). Sub-messages kept whole are shared too.
func (m *FieldMask) Apply(f *flowtracev1.Flow) *flowtracev1.Flow {
	if m == nil || f == nil {
		return f
	}
	out := &flowtracev1.Flow{}
	m.root.copy(out.ProtoReflect(), f.ProtoReflect())
	return out
}

func (n *maskNode) copy(dst, src protoreflect.Message) {
	for _, mf := range n.fields {
		if !src.Has(mf.fd) {
			continue
		}
		if mf.sub == nil {
			dst.Set(mf.fd, src.Get(mf.fd))
			continue
		}
		mf.sub.copy(dst.Mutable(mf.fd).Message(), src.Get(mf.fd).Message())
	}
}

// FlowFieldPaths lists the valid mask paths (every field, at every depth), for
// shell completion and help.
func FlowFieldPaths() []string {
	var out []string
	var walk func(prefix string, md protoreflect.MessageDescriptor, depth int)
	walk = func(prefix string, md protoreflect.MessageDescriptor, depth int) {
		fs := md.Fields()
		for i := 0; i < fs.Len(); i++ {
			fd := fs.Get(i)
			p := prefix + string(fd.Name())
			out = append(out, p)
			if fd.Kind() == protoreflect.MessageKind && fd.Cardinality() != protoreflect.Repeated &&
				fd.Message().FullName().Parent() == "flowtrace.v1" && depth < 3 {
				walk(p+".", fd.Message(), depth+1)
			}
		}
	}
	walk("", (&flowtracev1.Flow{}).ProtoReflect().Descriptor(), 0)
	return out
}
