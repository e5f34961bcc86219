// One GET with Go's net/http default client, configured only by the environment, for
// tests/clients.rs: http.DefaultTransport takes its proxy from HTTP_PROXY / HTTPS_PROXY /
// NO_PROXY (http.ProxyFromEnvironment), and crypto/tls its roots from SSL_CERT_FILE.
//
//	go_client URL
//
// Prints one JSON line: {"status", "reason", "denied", "body"} when the program got a
// response, or {"error": err.Error()} when the request failed. Standard library only.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	client := &http.Client{Timeout: 10 * time.Second}
	outcome := map[string]any{}
	resp, err := client.Get(os.Args[1])
	if err != nil {
		outcome["error"] = err.Error()
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		outcome["status"] = resp.StatusCode
		outcome["reason"] = strings.TrimPrefix(resp.Status, fmt.Sprintf("%d ", resp.StatusCode))
		if denied := resp.Header.Get("X-Egress-Denied"); denied != "" {
			outcome["denied"] = denied
		}
		outcome["body"] = string(body)
	}
	line, _ := json.Marshal(outcome)
	fmt.Println(string(line))
}
