module github.com/libspotinfer/libspotinfer/bindings/go

go 1.21
