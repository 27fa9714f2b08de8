package addrfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.addr")
	if err := Write(path, "127.0.0.1:4242"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "127.0.0.1:4242\n" {
		t.Fatalf("file holds %q", got)
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("the temporary file is left: %v", err)
	}
	// Again: the address is replaced, not appended.
	if err := Write(path, "127.0.0.1:7"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "127.0.0.1:7\n" {
		t.Fatalf("file holds %q after a second write", got)
	}
}

func TestWriteNoDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "a.addr")
	if err := Write(path, "127.0.0.1:1"); err == nil {
		t.Fatal("no error for a directory that does not exist")
	}
}
