//go:build !unix

package kallsyms

func (t *Table) moveOffHeap() {}
