package main

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// sink is the floor: a go-smtp server that accepts everything and keeps nothing. Whatever
// mailgate adds (verification, parsing, sealing, the fsync) shows as the distance to it.
type sink struct {
	srv *smtp.Server
	l   net.Listener
	n   atomic.Int64
}

func startSink(addr string) (*sink, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &sink{l: l}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) { return &sinkSession{s: s}, nil }))
	srv.Domain = "sink.localhost"
	srv.MaxMessageBytes = 64 << 20
	srv.MaxRecipients = 100
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.ErrorLog = discardLog{}
	s.srv = srv
	go srv.Serve(l)
	return s, nil
}

func (s *sink) Addr() net.Addr { return s.l.Addr() }

// Count is the number of messages accepted so far.
func (s *sink) Count() int64 { return s.n.Load() }

func (s *sink) Close() error {
	err := s.srv.Close()
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

type sinkSession struct{ s *sink }

func (x *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (x *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (x *sinkSession) Reset()                               {}
func (x *sinkSession) Logout() error                        { return nil }
func (x *sinkSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	x.s.n.Add(1)
	return nil
}

type discardLog struct{}

func (discardLog) Printf(string, ...any) {}
func (discardLog) Println(...any)        {}
