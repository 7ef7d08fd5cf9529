package web

import (
	"context"
	"net"
	"testing"
	"time"
)

// A Shutdown that runs before Serve (a SIGTERM right after start-up) still stops it: Serve
// returns instead of serving a listener nobody will close.
func TestServeAfterShutdownReturns(t *testing.T) {
	s := newEnv(t).srv
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		l.Close()
		t.Fatal("Serve after Shutdown kept serving")
	}
}
