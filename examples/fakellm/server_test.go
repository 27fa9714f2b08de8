package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testServer(t *testing.T, args ...string) (*httptest.Server, *server) {
	t.Helper()
	o, err := parseFlags(append([]string{"-token-rate", "2000", "-ttft", "1ms", "-cached-ttft", "0s"}, args...))
	if err != nil {
		t.Fatal(err)
	}
	s, err := newServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.routes())
	t.Cleanup(ts.Close)
	return ts, s
}

// streamText posts body and returns the streamed text, the finish reason
// and the usage chunk's completion tokens (-1 without one).
func streamText(t *testing.T, url, body string) (string, string, int) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var text strings.Builder
	finish, usage, done := "", -1, false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		data := strings.TrimPrefix(line, "data: ")
		if data == "[DONE]" {
			done = true
			continue
		}
		var c struct {
			Choices []struct {
				Delta        struct{ Content string }
				Text         string
				FinishReason *string `json:"finish_reason"`
			}
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			}
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatalf("bad chunk %q: %v", data, err)
		}
		for _, ch := range c.Choices {
			text.WriteString(ch.Delta.Content + ch.Text)
			if ch.FinishReason != nil {
				finish = *ch.FinishReason
			}
		}
		if c.Usage != nil {
			usage = c.Usage.CompletionTokens
		}
	}
	if !done {
		t.Fatal("stream ended without [DONE]")
	}
	return text.String(), finish, usage
}

func TestChatStreamIsDeterministicAndContinues(t *testing.T) {
	ts, _ := testServer(t, "-answer-tokens", "20")
	url := ts.URL + "/v1/chat/completions"
	body := `{"model":"m","stream":true,"stream_options":{"include_usage":true},
	  "messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}`
	full, finish, usage := streamText(t, url, body)
	again, _, _ := streamText(t, url, body)
	if full != again || finish != "stop" || usage != 20 || len(strings.Fields(full)) != 20 {
		t.Fatalf("full %q (%s, usage %d), again %q", full, finish, usage, again)
	}
	// Cut after 7 tokens and continue as the library's continuation does.
	var cut int
	for i, n := 0, 0; i < len(full); i++ {
		if full[i] == ' ' {
			if n == 7 {
				cut = i
				break
			}
			n++
		}
	}
	partial := full[:cut]
	pj, _ := json.Marshal(partial)
	cont := `{"model":"m","stream":true,"max_tokens":13,"stream_options":{"include_usage":true},
	  "continue_final_message":true,"add_generation_prompt":false,
	  "messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},
	  {"role":"assistant","content":` + string(pj) + `}]}`
	rest, finish, usage := streamText(t, url, cont)
	if partial+rest != full || usage != 13 || finish != "stop" {
		t.Fatalf("partial %q + rest %q != %q (finish %s, usage %d)", partial, rest, full, finish, usage)
	}
}

// -tokens-per-event puts several tokens in an event, as vLLM does with a
// stream interval or speculative decoding: the same text, fewer events; with
// continuous_usage_stats every chunk counts the tokens so far.
func TestSeveralTokensPerEvent(t *testing.T) {
	one, _ := testServer(t, "-answer-tokens", "20")
	three, _ := testServer(t, "-answer-tokens", "20", "-tokens-per-event", "3")
	body := `{"model":"m","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true},
	  "messages":[{"role":"user","content":"hi"}]}`
	want, _, _ := streamText(t, one.URL+"/v1/chat/completions", body)
	resp, err := http.Post(three.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var text strings.Builder
	var counts []int // per content event: words in it, then the usage so far
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var c struct {
			Choices []struct{ Delta struct{ Content string } }
			Usage   *struct {
				CompletionTokens int `json:"completion_tokens"`
			}
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatal(err)
		}
		if c.Usage == nil {
			t.Fatalf("a chunk without usage: %s", data)
		}
		if len(c.Choices) == 1 && c.Choices[0].Delta.Content != "" {
			text.WriteString(c.Choices[0].Delta.Content)
			counts = append(counts, len(strings.Fields(c.Choices[0].Delta.Content)), c.Usage.CompletionTokens)
		}
	}
	wantCounts := []int{3, 3, 3, 6, 3, 9, 3, 12, 3, 15, 3, 18, 2, 20}
	if text.String() != want || fmt.Sprint(counts) != fmt.Sprint(wantCounts) {
		t.Fatalf("text %q (want %q), tokens and usage per event %v", text.String(), want, counts)
	}
	// Without continuous_usage_stats: the same text, and the usage chunk at
	// the end counts every token.
	plain := strings.Replace(body, `,"continuous_usage_stats":true`, "", 1)
	if got, _, usage := streamText(t, three.URL+"/v1/chat/completions", plain); got != want || usage != 20 {
		t.Fatalf("got %q, usage %d", got, usage)
	}
}

func TestCompletionsContinue(t *testing.T) {
	ts, _ := testServer(t, "-answer-tokens", "12")
	url := ts.URL + "/v1/completions"
	full, _, _ := streamText(t, url, `{"model":"m","prompt":"Once upon a time","stream":true}`)
	k := strings.Index(full[1:], " ") + 1
	k += strings.Index(full[k+1:], " ") + 1 // two tokens
	pj, _ := json.Marshal("Once upon a time" + full[:k])
	rest, _, _ := streamText(t, url, `{"model":"m","prompt":`+string(pj)+`,"stream":true}`)
	if full[:k]+rest != full {
		t.Fatalf("%q + %q != %q", full[:k], rest, full)
	}
}

func TestContinuationThatDoesNotMatchIsRefused(t *testing.T) {
	ts, _ := testServer(t)
	for _, body := range []string{
		`{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":" not-a-token"}],"continue_final_message":true,"add_generation_prompt":false}`,
		`{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"x"}],"continue_final_message":true}`,
		`{"messages":[]}`,
		`{"messages":`,
	} {
		resp, err := http.Post(ts.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Message string }
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 400 || e.Message == "" {
			t.Errorf("%s: status %d message %q", body, resp.StatusCode, e.Message)
		}
	}
}

func TestMetricsAndPrefixCache(t *testing.T) {
	ts, s := testServer(t, "-ttft", "300ms", "-cached-ttft", "1ms")
	sys := strings.Repeat("You are a careful assistant. ", 40)
	body := `{"model":"m","max_tokens":2,"messages":[{"role":"system","content":"` + sys +
		`"},{"role":"user","content":"q"}]}`
	var took [2]time.Duration
	for i := range took {
		start := time.Now()
		resp, err := http.Post(ts.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			Usage struct {
				Details *struct {
					Cached int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			}
		}
		json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		took[i] = time.Since(start)
		if (out.Usage.Details != nil) != (i == 1) {
			t.Errorf("request %d: cached tokens reported %v", i, out.Usage.Details)
		}
	}
	if took[1] >= took[0]/2 {
		t.Errorf("a cached prefix did not lower the time to first token: %v then %v", took[0], took[1])
	}
	resp, err := http.Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"vllm:num_requests_running{", "vllm:num_requests_waiting{",
		"vllm:kv_cache_usage_perc{", "vllm:prefix_cache_hits_total{"} {
		if !strings.Contains(string(b), name) {
			t.Errorf("metrics lack %s:\n%s", name, b)
		}
	}
	if s.hits == 0 {
		t.Error("no prefix cache hits counted")
	}
}

// TestHelperProcess runs main() when the test binary is started by
// TestDieAt (the process must really exit).
func TestHelperProcess(t *testing.T) {
	if os.Getenv("FAKELLM_HELPER") != "1" {
		return
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	os.Args = append([]string{"fakellm"}, args...)
	main()
}

// -die-at ends the process mid-stream, as a reclaimed machine does: the
// client's stream breaks without [DONE] and the process exits with 3.
func TestDieAt(t *testing.T) {
	dir := t.TempDir()
	addrFile := filepath.Join(dir, "addr")
	logFile := filepath.Join(dir, "log")
	at := time.Now().Add(700 * time.Millisecond)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "--", "-addr-file", addrFile,
		"-log", logFile, "-token-rate", "50", "-answer-tokens", "200",
		"-die-at", at.Format(time.RFC3339Nano))
	cmd.Env = append(os.Environ(), "FAKELLM_HELPER=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var addr []byte
	for i := 0; i < 100 && len(addr) == 0; i++ {
		time.Sleep(20 * time.Millisecond)
		addr, _ = os.ReadFile(addrFile)
	}
	if len(addr) == 0 {
		t.Fatal("no address written")
	}
	resp, err := http.Post("http://"+strings.TrimSpace(string(addr))+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), "[DONE]") || !strings.Contains(string(body), `"content"`) {
		t.Fatalf("the stream was not cut mid-way: %q", body)
	}
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("exit: %v", err)
	}
	if time.Now().Before(at) {
		t.Fatal("died before its time")
	}
	log, _ := os.ReadFile(logFile)
	if !strings.Contains(string(log), `"event":"died"`) {
		t.Fatalf("log lacks the death: %s", log)
	}
}

// stream_options are read as vLLM reads them: an object asks for the usage
// chunk unless include_usage is false or null (vLLM's default is true,
// OpenAI's false), and for the usage in every chunk with
// continuous_usage_stats too.
func TestStreamOptionsAsVLLMReadsThem(t *testing.T) {
	ts, _ := testServer(t, "-answer-tokens", "4")
	for opts, want := range map[string]string{
		``:                       "running false, at the end false",
		`"stream_options":null,`: "running false, at the end false",
		`"stream_options":{},`:   "running false, at the end true",
		`"stream_options":{"include_usage":null},`:                                "running false, at the end false",
		`"stream_options":{"include_usage":false,"continuous_usage_stats":true},`: "running false, at the end false",
		`"stream_options":{"continuous_usage_stats":true},`:                       "running true, at the end true",
		`"stream_options":{"include_usage":true,"continuous_usage_stats":null},`:  "running false, at the end true",
	} {
		body := `{"model":"m","stream":true,` + opts + `"messages":[{"role":"user","content":"hi"}]}`
		resp, err := http.Post(ts.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		running, atEnd := false, false
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok || data == "[DONE]" {
				continue
			}
			var c struct {
				Choices []json.RawMessage
				Usage   json.RawMessage
			}
			if err := json.Unmarshal([]byte(data), &c); err != nil {
				t.Fatalf("bad chunk %q: %v", data, err)
			}
			if len(c.Usage) > 0 && string(c.Usage) != "null" {
				running = running || len(c.Choices) > 0
				atEnd = atEnd || len(c.Choices) == 0
			}
		}
		resp.Body.Close()
		if got := fmt.Sprintf("running %v, at the end %v", running, atEnd); got != want {
			t.Errorf("%s: %s, want %s", opts, got, want)
		}
	}
}

// A continuation whose final message already holds the whole answer is
// answered as vLLM answers it: no text, finish_reason "stop" (streamed,
// with a usage of 0 tokens; and whole).
func TestContinuationOfTheWholeAnswerStops(t *testing.T) {
	ts, _ := testServer(t, "-answer-tokens", "8")
	url := ts.URL + "/v1/chat/completions"
	full, _, _ := streamText(t, url, `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	pj, _ := json.Marshal(full)
	cont := `{"model":"m","stream":true,"stream_options":{"include_usage":true},
	  "continue_final_message":true,"add_generation_prompt":false,
	  "messages":[{"role":"user","content":"hi"},{"role":"assistant","content":` + string(pj) + `}]}`
	rest, finish, usage := streamText(t, url, cont)
	if rest != "" || finish != "stop" || usage != 0 {
		t.Fatalf("rest %q, finish %q, usage %d", rest, finish, usage)
	}
	whole := strings.Replace(cont, `"stream":true,`, "", 1)
	resp, err := http.Post(url, "application/json", strings.NewReader(whole))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Choices []struct {
			Message      struct{ Content string }
			FinishReason string `json:"finish_reason"`
		}
	}
	json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != 200 || len(out.Choices) != 1 || out.Choices[0].Message.Content != "" ||
		out.Choices[0].FinishReason != "stop" {
		t.Fatalf("status %d: %+v", resp.StatusCode, out)
	}
}
