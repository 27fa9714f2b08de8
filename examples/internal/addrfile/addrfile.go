// Package addrfile writes the address a server of the examples listens on
// to the file its -addr-file flag names, for the scripts and tests that
// start it on a port it picks.
package addrfile

import "os"

// Write puts addr and a newline in path. The text goes to path+".tmp"
// first and is renamed over path, so a reader polling for the file never
// sees half an address.
func Write(path, addr string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(addr+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
