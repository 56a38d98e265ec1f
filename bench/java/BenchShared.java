// The Curator side of succession-bench's `shared` group: one process hosting E Apache
// Curator LeaderLatches (Debian's libcurator-recipes-java 5.4.0) on ONE CuratorFramework
// (one ZooKeeper session), on the latch paths <prefix>/e<i>, driven over stdin/stdout.
// Compiled by the bench at startup with javac against Debian's jars, like BenchLatch.java.
//
// Timestamps are System.nanoTime() (CLOCK_MONOTONIC on Linux, checked by the bench with
// "ping").
//
// Commands (one per line on stdin):
//   ping                                      -> "pong <ns>"
//   shared <tag> <E> <connect> <prefix> <ms>  -> "added <ns at receipt> 0 <E>" once every latch
//                                                is started, then batched events
//   leaders                                   -> "leaderset <count> <i,i,...>" (hasLeadership())
//   sessions                                  -> "sessions 1 <session id hex>"
//   close                                     -> "closing <ns> 0" just before closing every
//                                                latch and then the client, "closed <ns> 0"
//   quit                                      -> exit
// Events come in batches, to keep 10,000 latches' output small: "b <kind> <ns> <i,i,...>",
// kind j (the latch's node exists), l (isLeader callback) or n (notLeader callback); <ns> is
// the latest stamp of the batch; batches keep the order of the events.
import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderLatchListener;
import org.apache.curator.retry.ExponentialBackoffRetry;

public class BenchShared {
    static final PrintStream OUT = new PrintStream(new FileOutputStream(FileDescriptor.out), false);

    static synchronized void out(String s) {
        OUT.println(s);
        OUT.flush();
    }

    /** An event: kind ('j', 'l', 'n'), latch index, stamp. */
    static final class Ev {
        final char kind;
        final int idx;
        final long t;

        Ev(char kind, int idx, long t) {
            this.kind = kind;
            this.idx = idx;
            this.t = t;
        }
    }

    static final ConcurrentLinkedQueue<Ev> events = new ConcurrentLinkedQueue<>();
    static volatile CuratorFramework client;
    static volatile LeaderLatch[] latches = new LeaderLatch[0];
    static volatile boolean[] joined = new boolean[0];
    static final AtomicBoolean closed = new AtomicBoolean(false);

    static void ev(char kind, int idx) {
        events.add(new Ev(kind, idx, System.nanoTime()));
    }

    /** Print the queued events as batches of one kind each, in order. */
    static void flush() {
        StringBuilder sb = null;
        char kind = 0;
        long tmax = 0;
        int n = 0;
        Ev e;
        while ((e = events.poll()) != null) {
            if (sb != null && (e.kind != kind || n >= 2000)) {
                out("b " + kind + " " + tmax + " " + sb);
                sb = null;
            }
            if (sb == null) {
                sb = new StringBuilder();
                kind = e.kind;
                tmax = 0;
                n = 0;
            } else {
                sb.append(',');
            }
            sb.append(e.idx);
            tmax = Math.max(tmax, e.t);
            n++;
        }
        if (sb != null) {
            out("b " + kind + " " + tmax + " " + sb);
        }
    }

    public static void main(String[] args) throws Exception {
        Thread flusher = new Thread(() -> {
            while (true) {
                try {
                    // Joined: the latch's node exists (polled, Curator has no callback).
                    LeaderLatch[] ls = latches;
                    boolean[] js = joined;
                    for (int i = 0; i < ls.length && i < js.length; i++) {
                        if (!js[i] && ls[i] != null && ls[i].getOurPath() != null) {
                            js[i] = true;
                            ev('j', i);
                        }
                    }
                    flush();
                    Thread.sleep(5);
                } catch (InterruptedException ie) {
                    return;
                } catch (Exception ex) {
                    out("err -1 flusher: " + ex);
                }
            }
        }, "flusher");
        flusher.setDaemon(true);
        flusher.start();

        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.trim().split(" ");
            switch (w[0]) {
                case "ping":
                    out("pong " + System.nanoTime());
                    break;
                case "shared": {
                    long t0 = System.nanoTime();
                    String tag = w[1];
                    int n = Integer.parseInt(w[2]);
                    String connect = w[3], prefix = w[4];
                    int sessionMs = Integer.parseInt(w[5]);
                    CuratorFramework c = CuratorFrameworkFactory.builder()
                            .connectString(connect)
                            .sessionTimeoutMs(sessionMs)
                            .connectionTimeoutMs(3000)
                            .retryPolicy(new ExponentialBackoffRetry(100, 10))
                            .build();
                    c.start();
                    client = c;
                    LeaderLatch[] ls = new LeaderLatch[n];
                    for (int k = 0; k < n; k++) {
                        final int idx = k;
                        LeaderLatch l = new LeaderLatch(c, prefix + "/e" + k, tag + "-e" + k);
                        l.addListener(new LeaderLatchListener() {
                            public void isLeader() {
                                ev('l', idx);
                            }

                            public void notLeader() {
                                ev('n', idx);
                            }
                        });
                        ls[k] = l;
                    }
                    joined = new boolean[n];
                    latches = ls;
                    for (int k = 0; k < n; k++) {
                        try {
                            ls[k].start();
                        } catch (Exception e) {
                            out("err " + k + " start: " + e);
                        }
                    }
                    out("added " + t0 + " 0 " + n);
                    break;
                }
                case "leaders": {
                    StringBuilder sb = new StringBuilder();
                    int count = 0;
                    LeaderLatch[] ls = latches;
                    if (!closed.get()) {
                        for (int i = 0; i < ls.length; i++) {
                            if (ls[i].hasLeadership()) {
                                if (count > 0) {
                                    sb.append(',');
                                }
                                sb.append(i);
                                count++;
                            }
                        }
                    }
                    out("leaderset " + count + " " + (count == 0 ? "-" : sb.toString()));
                    break;
                }
                case "sessions": {
                    long sid = 0;
                    try {
                        sid = client.getZookeeperClient().getZooKeeper().getSessionId();
                    } catch (Exception e) {
                        out("err -1 sessions: " + e);
                    }
                    out("sessions 1 " + Long.toHexString(sid));
                    break;
                }
                case "close": {
                    out("closing " + System.nanoTime() + " 0");
                    closed.set(true);
                    for (LeaderLatch l : latches) {
                        try {
                            l.close();
                        } catch (Exception e) {
                            // already closed, or the connection is gone
                        }
                    }
                    try {
                        client.close();
                    } catch (Exception e) {
                        out("err -1 close client: " + e);
                    }
                    out("closed " + System.nanoTime() + " 0");
                    break;
                }
                case "quit":
                    flush();
                    OUT.flush();
                    Runtime.getRuntime().halt(0);
                    break;
                default:
                    out("err -1 unknown command " + line);
            }
        }
        Runtime.getRuntime().halt(0);
    }
}
