// Command spdy_interop is a test client for teaching-cri's SPDY/3.1 streaming
// server built on github.com/moby/spdystream (v0.2.0, the library client-go's
// k8s.io/apimachinery/pkg/util/httpstream/spdy wraps), not on teaching-cri's
// own code. It does what client-go's tools/remotecommand (protocol v4) and
// tools/portforward do on the wire, step by step; each step's comment names
// the client-go code it copies.
//
// Usage:
//
//	spdy_interop [flags] exec URL         exec or attach (the same protocol)
//	spdy_interop [flags] portforward URL  one connection per -count to -port
//
// exec: the program's stdin goes to the stdin stream (-stdin), the stdout and
// stderr streams to its own; the error stream's metav1.Status is written as a
// JSON report (-report FILE, or one line on stderr) and the program exits with
// the command's exit code, as kubectl exec does (1 for any other failure).
//
// portforward: the program's stdin is sent on the data stream of each of
// -count connections (requestID 0, 1, ...), each connection's answer goes to
// stdout, and what the error streams said goes into the report; exit 1 when
// one said anything.
//
// Failures of the client itself (dial, upgrade, stream creation) exit 125.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moby/spdystream"
)

// k8s.io/api/core/v1 (types.go) and k8s.io/apimachinery/pkg/util/remotecommand.
const (
	streamType                 = "streamType"
	portHeader                 = "port"
	portForwardRequestIDHeader = "requestID"
	nonZeroExitCodeReason      = "NonZeroExitCode"
	exitCodeCauseType          = "ExitCode"
)

// The versions client-go offers, newest first: remotecommand.NewSPDYExecutor's
// protocols (StreamProtocolV4Name .. V1), and portforward.PortForwardProtocolV1Name.
var (
	execProtocols        = []string{"v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"}
	portForwardProtocols = []string{"portforward.k8s.io"}
)

// createStreamResponseTimeout: apimachinery's spdy connection.CreateStream.
const createStreamResponseTimeout = 30 * time.Second

// status is the part of metav1.Status that client-go's errorDecoderV4 reads.
type status struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Details *struct {
		Causes []struct {
			Type    string `json:"reason,omitempty"`
			Message string `json:"message,omitempty"`
		} `json:"causes,omitempty"`
	} `json:"details,omitempty"`
}

// report is what the program tells its caller besides the streams' bytes.
type report struct {
	Protocol    string          `json:"protocol"`
	Status      json.RawMessage `json:"status,omitempty"`        // exec: the error stream, as sent
	ExitCode    int             `json:"exitCode"`                // exec: as errorDecoderV4 reads it
	Error       string          `json:"error,omitempty"`         // exec: errorDecoderV4's error
	ForwardErrs []string        `json:"forwardErrors,omitempty"` // portforward: each error stream
	Pings       int64           `json:"pings"`                   // pings the server answered
}

var (
	method     = flag.String("method", "POST", "the upgrade request's method (kubectl exec and port-forward POST)")
	withStdin  = flag.Bool("stdin", false, "exec: open a stdin stream and copy our stdin to it")
	withStdout = flag.Bool("stdout", true, "exec: open a stdout stream")
	withStderr = flag.Bool("stderr", true, "exec: open a stderr stream (never with -tty)")
	tty        = flag.Bool("tty", false, "exec: a terminal: no stderr stream, a resize stream")
	resizes    = flag.String("resize", "", "exec: terminal sizes to send, WIDTHxHEIGHT[,...]")
	port       = flag.Int("port", 0, "portforward: the pod's port")
	count      = flag.Int("count", 1, "portforward: connections to forward, one after another")
	pingPeriod = flag.Duration("ping-period", 5*time.Second, "PING period (client-go's RoundTripperFor: 5s)")
	reportPath = flag.String("report", "", "write the JSON report here (default: stderr)")
)

func main() {
	flag.Parse()
	if flag.NArg() != 2 || (flag.Arg(0) != "exec" && flag.Arg(0) != "portforward") {
		fmt.Fprintln(os.Stderr, "usage: spdy_interop [flags] exec|portforward URL")
		os.Exit(125)
	}
	protocols := execProtocols
	if flag.Arg(0) == "portforward" {
		protocols = portForwardProtocols
	}
	conn, protocol, err := dial(flag.Arg(1), protocols)
	if err != nil {
		fail(err)
	}
	rep := &report{Protocol: protocol}
	// apimachinery's NewClientConnectionWithPings: the client's side of the
	// session, served in the background with NoOpNewStreamHandler (the server
	// opens no streams), pinging every pingPeriod.
	go conn.Serve(spdystream.NoOpStreamHandler)
	go sendPings(conn, *pingPeriod, &rep.Pings)
	// remotecommand's streamExecutor and portforward's PortForwarder both
	// `defer conn.Close()`: GOAWAY once they are done.
	code := 0
	if flag.Arg(0) == "exec" {
		code, err = remoteCommand(conn, protocol, rep)
	} else {
		code, err = portForward(conn, rep)
	}
	closeConnection(conn)
	if err != nil {
		fail(err)
	}
	writeReport(rep)
	os.Exit(code)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "spdy_interop:", err)
	os.Exit(125)
}

func writeReport(rep *report) {
	doc, _ := json.Marshal(rep)
	if *reportPath == "" {
		fmt.Fprintf(os.Stderr, "spdy_interop: %s\n", doc)
		return
	}
	if err := os.WriteFile(*reportPath, append(doc, '\n'), 0o644); err != nil {
		fail(err)
	}
}

// dial does what SpdyRoundTripper.RoundTrip and NewConnection do, and
// transport/spdy's Negotiate: the request made with http.NewRequest, one
// X-Stream-Protocol-Version header per protocol offered, Connection: Upgrade
// and Upgrade: SPDY/3.1 added, written with req.Write on a plain TCP
// connection; the response read with http.ReadResponse; anything but a 101
// with both upgrade headers is an error carrying the body; the protocol is
// the response's X-Stream-Protocol-Version.
func dial(rawURL string, protocols []string) (*spdystream.Connection, string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, "", err
	}
	if u.Scheme != "http" {
		return nil, "", fmt.Errorf("only http:// URLs, not %q", u.Scheme)
	}
	req, err := http.NewRequest(*method, u.String(), nil)
	if err != nil {
		return nil, "", err
	}
	for _, p := range protocols {
		req.Header.Add("X-Stream-Protocol-Version", p)
	}
	req.Header.Add("Connection", "Upgrade")
	req.Header.Add("Upgrade", "SPDY/3.1")
	tcp, err := net.Dial("tcp", u.Host)
	if err != nil {
		return nil, "", err
	}
	if err := req.Write(tcp); err != nil {
		tcp.Close()
		return nil, "", err
	}
	// RoundTrip reads the response through a bufio.Reader and hands the raw
	// connection on: a server must not send SPDY bytes before the client's
	// first frame, or they would be lost in that buffer (as in client-go).
	resp, err := http.ReadResponse(bufio.NewReader(tcp), req)
	if err != nil {
		tcp.Close()
		return nil, "", err
	}
	connection := strings.ToLower(resp.Header.Get("Connection"))
	upgrade := strings.ToLower(resp.Header.Get("Upgrade"))
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		!strings.Contains(connection, "upgrade") || !strings.Contains(upgrade, "spdy/3.1") {
		body, _ := io.ReadAll(resp.Body)
		tcp.Close()
		return nil, "", fmt.Errorf("unable to upgrade connection: %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	protocol := resp.Header.Get("X-Stream-Protocol-Version")
	if !contains(protocols, protocol) {
		tcp.Close()
		return nil, "", fmt.Errorf("the server chose %q, not one of %v", protocol, protocols)
	}
	conn, err := spdystream.NewConnection(tcp, false)
	if err != nil {
		tcp.Close()
		return nil, "", err
	}
	return conn, protocol, nil
}

// readerOnly hides everything but Read from io.Copy, as remotecommand's
// readerWrapper does.
type readerOnly struct{ io.Reader }

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// sendPings is apimachinery's connection.sendPings: a PING every period until
// the connection closes; a failed ping is only logged there, counted here.
func sendPings(conn *spdystream.Connection, period time.Duration, answered *int64) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-conn.CloseChan():
			return
		case <-t.C:
		}
		if _, err := conn.Ping(); err == nil {
			atomic.AddInt64(answered, 1)
		}
	}
}

// streams are the ones created and not yet removed, as apimachinery's
// connection registers them.
var (
	streamsLock sync.Mutex
	streams     = map[uint32]*spdystream.Stream{}
)

// closeConnection is apimachinery's connection.Close: every stream still
// registered reset (RST_STREAM CANCEL, unless this side already sent FIN),
// then spdystream's Close (GOAWAY).
func closeConnection(conn *spdystream.Connection) {
	streamsLock.Lock()
	for id, s := range streams {
		s.Reset()
		delete(streams, id)
	}
	streamsLock.Unlock()
	conn.Close()
}

// createStream is apimachinery's connection.CreateStream: SYN_STREAM with the
// headers, then wait for the SYN_REPLY.
func createStream(conn *spdystream.Connection, headers http.Header) (*spdystream.Stream, error) {
	stream, err := conn.CreateStream(headers, nil, false)
	if err != nil {
		return nil, err
	}
	if err := stream.WaitTimeout(createStreamResponseTimeout); err != nil {
		return nil, fmt.Errorf("stream %v: %v", headers, err)
	}
	streamsLock.Lock()
	streams[stream.Identifier()] = stream
	streamsLock.Unlock()
	return stream, nil
}

// remoteCommand is remotecommand's streamProtocolV4.stream (v2's
// createStreams and copies, v3's resize stream, v4's error decoding). Only
// v4 is spoken: the server under test must choose it.
func remoteCommand(conn *spdystream.Connection, protocol string, rep *report) (int, error) {
	if protocol != execProtocols[0] {
		return 0, fmt.Errorf("this client speaks only %s, the server chose %s", execProtocols[0], protocol)
	}
	// v2 createStreams: one http.Header reused, Set (so the key is
	// canonicalised to "Streamtype"; spdystream lowercases names on the wire):
	// the error stream first, then stdin, stdout, stderr (not with a tty).
	headers := http.Header{}
	headers.Set(streamType, "error")
	errorStream, err := createStream(conn, headers)
	if err != nil {
		return 0, err
	}
	var stdin, stdout, stderr, resize *spdystream.Stream
	if *withStdin {
		headers.Set(streamType, "stdin")
		if stdin, err = createStream(conn, headers); err != nil {
			return 0, err
		}
	}
	if *withStdout {
		headers.Set(streamType, "stdout")
		if stdout, err = createStream(conn, headers); err != nil {
			return 0, err
		}
	}
	if *withStderr && !*tty {
		headers.Set(streamType, "stderr")
		if stderr, err = createStream(conn, headers); err != nil {
			return 0, err
		}
	}
	// v3 createStreams: then a resize stream, with a fresh header, for a tty.
	if *tty {
		h := http.Header{}
		h.Set(streamType, "resize")
		if resize, err = createStream(conn, h); err != nil {
			return 0, err
		}
	}

	// watchErrorStream: read the error stream to its end in the background.
	errorChan := make(chan []byte)
	go func() {
		message, _ := io.ReadAll(errorStream)
		errorChan <- message
	}()

	// v3 handleResizes: each size JSON-encoded (remotecommand.TerminalSize has
	// no json tags: {"Width":..,"Height":..}) by one json.Encoder.
	if resize != nil && *resizes != "" {
		go func() {
			encoder := json.NewEncoder(resize)
			for _, size := range strings.Split(*resizes, ",") {
				var ts struct{ Width, Height uint16 }
				if _, err := fmt.Sscanf(size, "%dx%d", &ts.Width, &ts.Height); err != nil {
					fmt.Fprintln(os.Stderr, "spdy_interop: bad -resize:", size)
					continue
				}
				if err := encoder.Encode(&ts); err != nil {
					return
				}
			}
		}()
	}

	// v2 copyStdin: copy our stdin (through readerWrapper: io.Copy's 32 KiB
	// reads, one DATA frame per Write), then Close (FIN: this side is done); and
	// wait for the server to close its side of stdin, closing ours then too.
	if stdin != nil {
		var once sync.Once
		go func() {
			defer once.Do(func() { stdin.Close() })
			io.Copy(stdin, readerOnly{os.Stdin})
		}()
		go func() {
			defer once.Do(func() { stdin.Close() })
			io.Copy(io.Discard, stdin)
		}()
	}

	// v2 copyStdout / copyStderr: copy to ours until EOF, then drain (the
	// kubernetes#96339 fix: a frame left unread blocks spdystream's reader).
	var wg sync.WaitGroup
	copyOut := func(dst io.Writer, src *spdystream.Stream) {
		if src == nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer io.Copy(io.Discard, src)
			io.Copy(dst, src)
		}()
	}
	copyOut(os.Stdout, stdout)
	copyOut(os.Stderr, stderr)
	wg.Wait()

	// v4's errorDecoderV4: the error stream holds a metav1.Status, or nothing.
	message := <-errorChan
	if len(message) == 0 {
		return 0, nil
	}
	rep.Status = json.RawMessage(message)
	code, decodeErr := decodeV4(message)
	if decodeErr != nil {
		rep.Error = decodeErr.Error()
	}
	rep.ExitCode = code
	return code, nil
}

// decodeV4 is errorDecoderV4.decode, with kubectl's exit code for its error:
// the command's own for NonZeroExitCode, 1 for any other failure.
func decodeV4(message []byte) (int, error) {
	var st status
	if err := json.Unmarshal(message, &st); err != nil {
		return 1, fmt.Errorf("error stream protocol error: %v in %q", err, message)
	}
	switch st.Status {
	case "Success":
		return 0, nil
	case "Failure":
		if st.Reason != nonZeroExitCodeReason {
			return 1, fmt.Errorf("%s", st.Message)
		}
		if st.Details == nil {
			return 1, fmt.Errorf("error stream protocol error: details must be set")
		}
		for _, cause := range st.Details.Causes {
			if cause.Type != exitCodeCauseType {
				continue
			}
			rc, err := strconv.ParseUint(cause.Message, 10, 8)
			if err != nil {
				return 1, fmt.Errorf("error stream protocol error: invalid exit code value %q", cause.Message)
			}
			return int(rc), fmt.Errorf("command terminated with exit code %d", rc)
		}
		return 1, fmt.Errorf("error stream protocol error: no %s cause given", exitCodeCauseType)
	default:
		return 1, fmt.Errorf("error stream protocol error: unknown error")
	}
}

// portForward is tools/portforward's handleConnection, once per -count, on
// one session as kubectl forwards each local connection.
func portForward(conn *spdystream.Connection, rep *report) (int, error) {
	if *port <= 0 {
		return 0, fmt.Errorf("portforward needs -port")
	}
	payload, err := io.ReadAll(os.Stdin)
	if err != nil {
		return 0, err
	}
	code := 0
	for requestID := 0; requestID < *count; requestID++ {
		// The error stream first: streamType error, the port, the request id.
		headers := http.Header{}
		headers.Set(streamType, "error")
		headers.Set(portHeader, strconv.Itoa(*port))
		headers.Set(portForwardRequestIDHeader, strconv.Itoa(requestID))
		errorStream, err := createStream(conn, headers)
		if err != nil {
			return 0, err
		}
		// "we're not writing to this stream"
		errorStream.Close()
		errorChan := make(chan string)
		go func() {
			message, err := io.ReadAll(errorStream)
			switch {
			case err != nil:
				errorChan <- fmt.Sprintf("error reading from error stream: %v", err)
			case len(message) > 0:
				errorChan <- string(message)
			default:
				errorChan <- ""
			}
		}()

		// Then the data stream: the same headers, streamType data.
		headers.Set(streamType, "data")
		dataStream, err := createStream(conn, headers)
		if err != nil {
			return 0, err
		}
		remoteDone := make(chan struct{})
		go func() {
			// Copy from the remote side to the local "connection" (our stdout).
			io.Copy(os.Stdout, dataStream)
			close(remoteDone)
		}()
		go func() {
			// "inform server we're not sending any more data after copy unblocks"
			defer dataStream.Close()
			// Copy from the local connection to the remote side: io.Copy's
			// 32 KiB reads, one DATA frame per Write, as from a net.Conn.
			io.Copy(dataStream, readerOnly{bytes.NewReader(payload)})
		}()
		<-remoteDone
		// "always expect something on errorChan (it may be nil)"
		if message := <-errorChan; message != "" {
			rep.ForwardErrs = append(rep.ForwardErrs, message)
			code = 1
		}
		// RemoveStreams: the pair is done and forgotten (not reset at Close).
		streamsLock.Lock()
		delete(streams, errorStream.Identifier())
		delete(streams, dataStream.Identifier())
		streamsLock.Unlock()
	}
	return code, nil
}
