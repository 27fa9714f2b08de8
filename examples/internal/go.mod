module github.com/libspotinfer/libspotinfer/examples/internal

go 1.21
