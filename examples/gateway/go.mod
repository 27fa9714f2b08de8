module github.com/libspotinfer/libspotinfer/examples/gateway

go 1.21

require (
	github.com/libspotinfer/libspotinfer/bindings/go v0.0.0
	github.com/libspotinfer/libspotinfer/examples/internal v0.0.0
)

replace (
	github.com/libspotinfer/libspotinfer/bindings/go => ../../bindings/go
	github.com/libspotinfer/libspotinfer/examples/internal => ../internal
)
