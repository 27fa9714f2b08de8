module github.com/libspotinfer/libspotinfer/examples/fakellm

go 1.21

require github.com/libspotinfer/libspotinfer/examples/internal v0.0.0

replace github.com/libspotinfer/libspotinfer/examples/internal => ../internal
