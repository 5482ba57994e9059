package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpStream runs iperf3 from the client pod for d and returns the received
// bits per second.
func tcpStream(ctx context.Context, b *bed, d time.Duration) (float64, error) {
	var last error
	// The server may still be starting in the first round.
	for range 5 {
		args := []string{"iperf3", "-c", b.server.IPv4.String(), "-p", strconv.Itoa(portIperf),
			"-t", strconv.FormatFloat(d.Seconds(), 'f', -1, 64), "-J"}
		if runtime.NumCPU() >= 2 {
			args = append(args, "-A", "0,1") // see pinThread
		}
		out, err := b.exec(ctx, b.client.Netns, args...)
		if err == nil {
			var r struct {
				End struct {
					SumReceived struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal(out, &r); err != nil {
				return 0, fmt.Errorf("tcp stream: parse iperf3 output: %w", err)
			}
			if r.End.SumReceived.BitsPerSecond > 0 {
				return r.End.SumReceived.BitsPerSecond, nil
			}
			// A client that connected while the server was still
			// starting can report an empty test: try again, like a
			// failed start.
			err = errors.New("iperf3 received nothing")
		}
		last = err
		time.Sleep(500 * time.Millisecond)
	}
	return 0, fmt.Errorf("tcp stream: %w", last)
}

// udpPPS sends 64-byte UDP payloads as fast as one socket can for d and
// returns the packets per second the server pod received.
func udpPPS(b *bed, d time.Duration) (float64, error) {
	var rx *net.UDPConn
	if err := b.lab.Do(b.server.Netns, func() (err error) {
		rx, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(b.serverAddr(portUDP)))
		return err
	}); err != nil {
		return 0, fmt.Errorf("udp pps: listen: %w", err)
	}
	defer rx.Close()
	_ = rx.SetReadBuffer(4 << 20)
	var tx *net.UDPConn
	if err := b.lab.Do(b.client.Netns, func() (err error) {
		tx, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(b.serverAddr(portUDP)))
		return err
	}); err != nil {
		return 0, fmt.Errorf("udp pps: dial: %w", err)
	}
	defer tx.Close()

	var got atomic.Uint64
	var counting atomic.Bool
	done := pinned(1, func() {
		buf := make([]byte, 2048)
		for {
			if _, err := rx.Read(buf); err != nil {
				return
			}
			if counting.Load() {
				got.Add(1)
			}
		}
	})
	var elapsed time.Duration
	<-pinned(0, func() {
		payload := make([]byte, 64)
		// Half a second of warm-up fills caches and queues before counting.
		warm := time.Now().Add(500 * time.Millisecond)
		end := warm.Add(d)
		started := false
		var t0 time.Time
		for {
			now := time.Now()
			if !started && now.After(warm) {
				started, t0 = true, now
				counting.Store(true)
			}
			if now.After(end) {
				break
			}
			for range 64 {
				_, _ = tx.Write(payload) // ENOBUFS under overload is part of the measurement
			}
		}
		counting.Store(false)
		elapsed = time.Since(t0)
	})
	rx.Close()
	<-done
	n := got.Load()
	if n == 0 {
		return 0, errors.New("udp pps: server received nothing")
	}
	return float64(n) / elapsed.Seconds(), nil
}

// pinThread binds the calling goroutine to its thread and the thread to
// CPU cpu, for the rest of the goroutine's life: the thread ends with it
// (a goroutine that exits locked takes its thread along), so the binding
// never leaks to other goroutines. The throughput workloads put their
// sender on CPU 0 and receiver on CPU 1, as iperf3 -A 0,1 does: left to
// the scheduler, whether both ends (and the softirq work they carry)
// shared a CPU changed from run to run, and the no-tracer figure alone
// varied by ±10% on 2 cores, more than the costs being measured. Every
// tracer, and no tracer, runs with the same placement; the tracer itself
// is not pinned. A machine with one CPU leaves it to the scheduler.
func pinThread(cpu int) {
	if runtime.NumCPU() < 2 {
		return
	}
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	_ = unix.SchedSetaffinity(0, &set) // best effort: unpinned still measures
}

// pinned runs fn in a goroutine of its own bound to CPU cpu (pinThread)
// and returns a channel closed when fn has returned.
func pinned(cpu int, fn func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		pinThread(cpu)
		fn()
	}()
	return done
}

// rrLatency runs a 1-byte TCP ping-pong for d over one connection and
// returns p50 and p99 round-trip times in microseconds. Both ends are
// threads pinned to their own CPU (pinThread: client 0, server 1) that
// poll their socket with non-blocking reads (spinRead), so a round trip is
// the network path and whatever else wants those CPUs (a tracer among
// them), not wake-ups. Two earlier designs measured something else:
//   - Through Go's net package every round trip parked and woke a
//     goroutine on each side: the no-tracer p99 ranged 0.80-1.69x its own
//     median from round to round, wider than the 5% being measured.
//   - Blocking reads let each CPU halt between messages: the round trip
//     (p50 60 µs instead of 7) was then mostly this VM's wake-up from idle,
//     in which a tracer's cost vanishes.
func rrLatency(b *bed, d time.Duration) (p50, p99 float64, err error) {
	lfd, sa, err := b.listenServer(portRR)
	if err != nil {
		return 0, 0, fmt.Errorf("rr: listen: %w", err)
	}
	defer unix.Close(lfd)
	// The echo ends when the client closes: read returns 0 or an error.
	echoed := pinned(1, func() {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			return
		}
		defer unix.Close(fd)
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		buf := make([]byte, 1)
		for {
			if n, err := spinRead(fd, buf); n != 1 || err != nil {
				return
			}
			if _, err := unix.Write(fd, buf); err != nil {
				return
			}
		}
	})
	var lat []time.Duration
	// The socket is created in the thread's namespace: ping from inside.
	err = b.lab.Do(b.client.Netns, func() (err error) {
		pinThread(0)
		lat, err = pingPong(sa, d)
		return err
	})
	// Unblocks the echo's accept if the client never connected.
	_ = unix.Shutdown(lfd, unix.SHUT_RDWR)
	<-echoed
	if err != nil {
		return 0, 0, err
	}
	if len(lat) < 100 {
		return 0, 0, fmt.Errorf("rr: only %d round trips", len(lat))
	}
	slices.Sort(lat)
	us := func(q float64) float64 { return float64(quantile(lat, q).Nanoseconds()) / 1e3 }
	return us(0.50), us(0.99), nil
}

// pingPong connects to sa and times 1-byte round trips for d, after 1,000
// uncounted ones that warm caches and the path.
func pingPong(sa *unix.SockaddrInet4, d time.Duration) ([]time.Duration, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("rr: socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return nil, fmt.Errorf("rr: nodelay: %w", err)
	}
	if err := unix.Connect(fd, sa); err != nil {
		return nil, fmt.Errorf("rr: connect: %w", err)
	}
	lat := make([]time.Duration, 0, 1<<20)
	buf := []byte{1}
	end := time.Now().Add(d)
	for warm := 1000; time.Now().Before(end); warm-- {
		t := time.Now()
		if _, err := unix.Write(fd, buf); err != nil {
			return nil, fmt.Errorf("rr: write: %w", err)
		}
		if n, err := spinRead(fd, buf); n != 1 || err != nil {
			return nil, fmt.Errorf("rr: read: %d bytes, %v", n, err)
		}
		if warm <= 0 {
			lat = append(lat, time.Since(t))
		}
	}
	return lat, nil
}

// spinRead reads from fd without sleeping: it retries a read that would
// block until one returns data, end of stream or an error.
func spinRead(fd int, buf []byte) (int, error) {
	for {
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if err != unix.EAGAIN {
			return n, err
		}
	}
}

// quantile is the q-quantile of sorted: the sample at rank q*(n-1),
// rounded down.
func quantile(sorted []time.Duration, q float64) time.Duration {
	return sorted[int(q*float64(len(sorted)-1))]
}

// churn opens and immediately resets new TCP connections for d and returns
// new connections per second, and how busy the machine's CPUs were
// meanwhile (0..1, /proc/stat). With rate 0 it dials as fast as it can;
// otherwise it paces the dialers to rate connections per second, for the
// issue's "20,000 new connections/s at ≤ 5% cost", which is a cost at a
// rate, not a share of whatever rate the machine can reach.
//
// Each of the two dialers is a thread of its own in the client pod, pinned
// to a CPU (pinThread), making plain blocking calls: connect, accept one
// connection on the server pod's listener, close it (FIN), close its own
// end (RST). Accepting in the dialer keeps the listener's queue at most one
// connection per dialer deep. Two earlier designs measured something else:
//   - Go's net package parked and woke a netns-locked goroutine around every
//     connect; that hand-off of the thread's P took ~20% of both CPUs and
//     left them idle ~15% of the time: scheduler latency, not connection
//     cost, at a quarter of the rate plain calls reach.
//   - A separate acceptor thread fell behind pinned dialers, the queue
//     overflowed, and each dropped SYN's retransmission a second later
//     stalled a dialer for a fifth of a 5 s run: ±30% between runs.
func churn(b *bed, d time.Duration, rate int) (cps, busy float64, err error) {
	const dialers = 2
	lfd, sa, err := b.listenServer(portChurn)
	if err != nil {
		return 0, 0, fmt.Errorf("churn: listen: %w", err)
	}
	defer unix.Close(lfd)
	// Each dialer's gap between connections; it sleeps only when a
	// millisecond or more ahead of that schedule, and catches up at once
	// when behind, so a tracer's cost shows as CPU, not as a lower rate.
	var gap time.Duration
	if rate > 0 {
		gap = time.Duration(float64(time.Second) * dialers / float64(rate))
	}

	var n atomic.Uint64
	var wg sync.WaitGroup
	errs := make([]error, dialers)
	cpu0, err := machineCPU()
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	end := start.Add(d)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Sockets are created in the thread's namespace: dial from inside.
			errs[i] = b.lab.Do(b.client.Netns, func() error {
				pinThread(i % runtime.NumCPU())
				var ok, failures uint64
				defer func() { n.Add(ok) }()
				next := start
				for now := time.Now(); now.Before(end); now = time.Now() {
					if gap > 0 {
						if ahead := next.Sub(now); ahead >= time.Millisecond {
							ts := unix.NsecToTimespec(ahead.Nanoseconds())
							_ = unix.Nanosleep(&ts, nil) // a signal cuts it short: the loop re-checks
							continue
						}
						next = next.Add(gap)
					}
					if err := connectAcceptReset(sa, lfd); err != nil {
						if failures++; failures > 100 {
							return fmt.Errorf("churn: %w", err)
						}
						continue
					}
					ok++
				}
				return nil
			})
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, err := machineCPU()
	if err != nil {
		return 0, 0, err
	}
	if err := errors.Join(errs...); err != nil {
		return 0, 0, err
	}
	return float64(n.Load()) / elapsed.Seconds(), cpu1.busySince(cpu0), nil
}

// connectAcceptReset is one churn connection: connect to sa with a blocking
// socket, accept a connection on the listener lfd and close it (the server's
// FIN), then close the client's end with a zero linger: RST instead of FIN,
// so no TIME_WAIT and ports never run out. The connection accepted is this
// dialer's or another's; each dialer accepts once for each connect, so the
// queue never runs dry under a blocked accept.
func connectAcceptReset(sa *unix.SockaddrInet4, lfd int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1}); err != nil {
		return fmt.Errorf("linger: %w", err)
	}
	if err := unix.Connect(fd, sa); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	for {
		cfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
			continue
		}
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		return unix.Close(cfd)
	}
}

// listenServer opens a blocking TCP listener in the server pod on port and
// returns it with the address a client dials.
func (b *bed) listenServer(port int) (fd int, sa *unix.SockaddrInet4, err error) {
	srv := b.serverAddr(port)
	sa = &unix.SockaddrInet4{Port: int(srv.Port()), Addr: srv.Addr().As4()}
	// A socket belongs to the namespace of the thread that creates it.
	err = b.lab.Do(b.server.Netns, func() error {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err == nil {
			if err = unix.Bind(fd, sa); err == nil {
				err = unix.Listen(fd, unix.SOMAXCONN)
			}
		}
		if err != nil {
			unix.Close(fd)
		}
		return err
	})
	return fd, sa, err
}

// storm sends UDP datagrams the bench's nft rule drops, at rate per second
// for d: to one port (one flow) or spread over stormFlows ports. Each drop
// costs the sending thread the whole forward path, so two senders share the
// rate; for one flow they share one source port too (SO_REUSEPORT). It
// returns the rate achieved.
func storm(b *bed, d time.Duration, rate int, many bool) (float64, error) {
	const senders = 2
	var socks []*net.UDPConn
	defer func() {
		for _, s := range socks {
			s.Close()
		}
	}()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
			return err
		}
		return serr
	}}
	local := "0.0.0.0:0"
	for range senders {
		if err := b.lab.Do(b.client.Netns, func() error {
			pc, err := lc.ListenPacket(context.Background(), "udp4", local)
			if err != nil {
				return err
			}
			socks = append(socks, pc.(*net.UDPConn))
			local = pc.LocalAddr().String()
			return nil
		}); err != nil {
			return 0, fmt.Errorf("storm: socket: %w", err)
		}
	}
	start := time.Now()
	var total atomic.Uint64
	var wg sync.WaitGroup
	for i, tx := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, 64)
			share := float64(rate) / senders
			sent := 0
			for {
				el := time.Since(start)
				if el >= d {
					break
				}
				want := int(el.Seconds() * share)
				if sent >= want {
					time.Sleep(100 * time.Microsecond)
					continue
				}
				// A sender slower than its share would otherwise chase the
				// schedule long past d: check the clock inside the burst too.
				for ; sent < want && (sent%64 != 0 || time.Since(start) < d); sent++ {
					dst := b.serverAddr(portStorm1)
					if many {
						dst = b.serverAddr(portStormN + (sent*senders+i)%stormFlows)
					}
					_, _ = tx.WriteToUDPAddrPort(payload, dst)
				}
			}
			total.Add(uint64(sent))
		}()
	}
	wg.Wait()
	return float64(total.Load()) / time.Since(start).Seconds(), nil
}

// manyFlows sends one datagram to each of n ports of the server pod, at
// most rate per second: n new connections for the tracer to hold.
func manyFlows(b *bed, n, rate int) error {
	var tx *net.UDPConn
	if err := b.lab.Do(b.client.Netns, func() (err error) {
		tx, err = net.ListenUDP("udp4", nil)
		return err
	}); err != nil {
		return fmt.Errorf("held flows: socket: %w", err)
	}
	defer tx.Close()
	payload := make([]byte, 32)
	start := time.Now()
	for i := range n {
		if ahead := time.Duration(float64(i)/float64(rate)*1e9) - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
		_, _ = tx.WriteToUDPAddrPort(payload, b.serverAddr(portRSS+i%40000))
	}
	return nil
}
