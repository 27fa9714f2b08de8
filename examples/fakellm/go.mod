module github.com/libspotinfer/libspotinfer/examples/fakellm

go 1.21
