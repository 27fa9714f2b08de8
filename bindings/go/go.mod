module github.com/spotinfer/spotinfer-go

go 1.21
