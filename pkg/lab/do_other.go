//go:build !linux

package lab

import "errors"

// Do needs Linux network namespaces.
func (l *Lab) Do(netnsName string, fn func() error) error {
	return errors.New("lab: network namespaces need Linux")
}
