module github.com/libspotinfer/libspotinfer/tests/promlint

go 1.22

replace github.com/libspotinfer/libspotinfer/bindings/go => ../../bindings/go

require (
	github.com/libspotinfer/libspotinfer/bindings/go v0.0.0-00010101000000-000000000000
	github.com/prometheus/client_golang v1.22.0
	github.com/prometheus/client_model v0.6.1
	github.com/prometheus/common v0.62.0
)

require (
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	google.golang.org/protobuf v1.36.5 // indirect
)
