package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"mailgate/access"
	"mailgate/audit"
)

// maxRequest bounds one control request (a reply text or a key file travels inside it).
const maxRequest = 32 << 20

// ErrNoDaemon means nothing answers on the control socket: run the command directly.
var ErrNoDaemon = errors.New("no mailgate daemon answers on the control socket")

// ListenControl creates the control socket at path, readable and writable by the owner only.
// The caller holds the database lock, so a socket file left there is stale and is replaced.
func ListenControl(path string) (net.Listener, error) {
	if len(path) > 104 {
		// sun_path is 108 bytes on Linux, 104 on the BSDs.
		return nil, fmt.Errorf("control socket path %s is too long for a unix socket (%d bytes); use a shorter data_dir", path, len(path))
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	} else if st.Mode().Perm()&0o077 != 0 {
		// The directory's mode is what keeps other users away from the socket on every OS.
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("control socket: make %s private: %w", dir, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("control socket: remove stale %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: chmod: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return ln, nil
}

// Control serves admin commands on a control socket.
type Control struct {
	app *App
	ln  net.Listener
	log *slog.Logger
	wg  sync.WaitGroup
	seq uint64
	mu  sync.Mutex
}

// ServeControl answers requests on ln until Close. Each connection carries one request and
// one response, both JSON. Only peers running as this process's user are served.
func (a *App) ServeControl(ln net.Listener) *Control {
	c := &Control{app: a, ln: ln, log: a.Log}
	c.wg.Add(1)
	go c.loop()
	return c
}

func (c *Control) loop() {
	defer c.wg.Done()
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			c.log.Warn("control socket accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		c.mu.Lock()
		c.seq++
		id := fmt.Sprintf("ctl-%d", c.seq)
		c.mu.Unlock()
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.serve(conn, c.log.With("conn", id))
		}()
	}
}

func (c *Control) serve(conn net.Conn, log *slog.Logger) {
	defer conn.Close()
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return
	}
	uid, pid, err := peerCred(uc)
	if err != nil {
		log.Warn("control socket: cannot identify the peer; refused", "err", err)
		c.refused(log, "cannot identify the peer: "+err.Error())
		return
	}
	if uid != os.Getuid() {
		log.Warn("control socket: peer runs as another user; refused", "peer_uid", uid, "pid", pid)
		c.refused(log, fmt.Sprintf("peer uid=%d pid=%d runs as another user than mailgate", uid, pid))
		writeResponse(conn, Response{Error: "the control socket serves only the user mailgate runs as", Exit: 1})
		return
	}
	conn.SetDeadline(time.Now().Add(10 * time.Minute))
	var req Request
	if err := json.NewDecoder(io.LimitReader(conn, maxRequest)).Decode(&req); err != nil {
		log.Warn("control socket: bad request", "err", err)
		writeResponse(conn, Response{Error: "bad request: " + err.Error(), Exit: 2})
		return
	}
	caller := Caller{Remote: "ctl", Detail: fmt.Sprintf("uid=%d pid=%d", uid, pid)}
	start := time.Now()
	resp := c.app.Dispatch(context.Background(), caller, req)
	log.Info("admin command", "cmd", req.Cmd, "exit", resp.Exit, "pid", pid, "took", time.Since(start).Round(time.Millisecond))
	writeResponse(conn, resp)
}

// refused audits a connection the control socket turned away: every refusal is on record. Only
// processes that may open the socket (its owner, root) get here, so this cannot flood the log.
func (c *Control) refused(log *slog.Logger, detail string) {
	err := c.app.Audit.Append(audit.Event{Actor: access.Ctl.Name, Action: "ctl.connect", Object: "control.sock",
		Remote: "ctl", Result: audit.Denied, Detail: detail})
	if err != nil {
		log.Error("audit control socket refusal", "err", err)
	}
}

func writeResponse(w io.Writer, r Response) {
	json.NewEncoder(w).Encode(r)
}

// Close stops accepting, waits for the commands in flight and removes the socket.
func (c *Control) Close() error {
	err := c.ln.Close()
	c.wg.Wait()
	return err
}

// Call sends req to the daemon listening on path. It returns ErrNoDaemon when no daemon
// answers (no socket, or a stale one), so the caller can run the command directly.
func Call(ctx context.Context, path string, req Request) (Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return Response{}, fmt.Errorf("%w (%s)", ErrNoDaemon, path)
		}
		return Response{}, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// The daemon may answer (a refusal) before reading the request, so a failed send is
	// reported only when no answer can be read either.
	sendErr := json.NewEncoder(conn).Encode(req)
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		if sendErr != nil {
			return Response{}, fmt.Errorf("control socket: send: %w", sendErr)
		}
		return Response{}, fmt.Errorf("control socket: the daemon closed the connection without an answer: %w", err)
	}
	return resp, nil
}
