// Command floorwebhook is the least an admission webhook process can do, for
// TestAdmissionCPU's floor run (ADMISSION_FLOOR=1): serve HTTPS over
// HTTP/1.1 as the power webhook does, read each AdmissionReview whole, and
// allow it, echoing its request's uid, without decoding anything else. What
// it costs per pod is what the serving path alone costs on the machine, the
// floor under the power webhook's CPU per admission. It is a measuring
// instrument, never deployed.
//
// GET /count on --count-address (plain HTTP, loopback) answers the number of
// reviews served, so the driver can check every pod went through it.
package main

import (
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"strconv"
	"sync/atomic"
)

// maxBody bounds a review, as the power webhook does.
const maxBody = 7 << 20

func main() {
	addr := flag.String("address", "127.0.0.1:0", "HTTPS address to serve reviews on")
	countAddr := flag.String("count-address", "127.0.0.1:0", "plain HTTP address answering GET /count")
	cert := flag.String("cert", "", "serving certificate (PEM)")
	key := flag.String("key", "", "serving key (PEM)")
	flag.Parse()

	var served atomic.Int64
	reviews := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
		uid, ok := requestUID(body)
		if err != nil || !ok {
			http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
			return
		}
		served.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":%s,"allowed":true}}`, uid)
	})
	go func() {
		count := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, strconv.FormatInt(served.Load(), 10))
		})
		log.Fatal(http.ListenAndServe(*countAddr, count))
	}()
	srv := &http.Server{
		Addr: *addr, Handler: reviews,
		// HTTP/1.1 only, TLS 1.2 at least: as the power webhook serves.
		TLSConfig:    &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	log.Fatal(srv.ListenAndServeTLS(*cert, *key))
}

// requestUID is the quoted uid of a review's request: the API server writes
// the request's uid as its first field.
func requestUID(body []byte) ([]byte, bool) {
	const field = `"request":{"uid":`
	i := bytes.Index(body, []byte(field))
	if i < 0 {
		return nil, false
	}
	rest := body[i+len(field):]
	end := bytes.IndexByte(rest[min(1, len(rest)):], '"')
	if len(rest) == 0 || rest[0] != '"' || end < 0 {
		return nil, false
	}
	return rest[:end+2], true
}
