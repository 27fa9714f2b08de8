package spotinfer_test

import (
	"errors"
	"fmt"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

func Example() {
	e, err := spotinfer.NewEngine(`{"cost":{"spot_usd_per_gpu_hour":1.8}}`)
	if err != nil {
		panic(err)
	}
	defer e.Close()

	body := []byte(`{"model":"llama-3.1-70b","stream":true,` +
		`"messages":[{"role":"user","content":"Hello"}]}`)
	r, err := e.ParseOpenAI(body, spotinfer.OpenAIAuto)
	if err != nil {
		panic(err)
	}
	defer r.Close()

	c, _ := r.Classify(spotinfer.PressureNormal)
	key, _ := r.CacheKey()
	fmt.Println(c.Class, c.Reason, len(key.String()))

	// No replicas yet: routing says so with a typed error.
	_, err = r.Route()
	fmt.Println(errors.Is(err, spotinfer.ErrNoCapacity))
	// Output:
	// gold rule interactive 32
	// true
}
