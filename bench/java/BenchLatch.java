// The Curator side of succession-bench: hosts any number of Apache Curator LeaderLatch
// participants (Debian's libcurator-recipes-java 5.4.0), each with its own CuratorFramework
// (its own ZooKeeper session, as separate processes would have), driven over stdin/stdout.
// Compiled by the bench at startup with javac against Debian's jars.
//
// Timestamps are System.nanoTime(), which on Linux reads CLOCK_MONOTONIC: the bench reads
// the same clock, checks that with "ping", and compares instants across processes.
//
// Commands (one per line on stdin):
//   ping                                   -> "pong <ns>"
//   add <tag> <n> <connect> <path> <ms>    -> "added <ns at receipt> <first index> <n>",
//                                             then events for the new participants
//   close <index>                          -> "closing <ns> <index>" just before
//                                             latch.close(); client.close(), then
//                                             "closed <ns> <index>"
//   closeall                               -> closes every open participant, "closedall <ns>"
//   leaders                                -> "leaders <count of hasLeadership()>"
//   quit                                   -> exit
// Events: "ev <ns> <index> joined <session id hex>" (our node exists), "ev <ns> <index> leader"
// (isLeader callback), "ev <ns> <index> notleader" (notLeader callback),
// "err <index> <message>" for failures.
import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderLatchListener;
import org.apache.curator.retry.ExponentialBackoffRetry;

public class BenchLatch {
    static final PrintStream OUT = new PrintStream(new FileOutputStream(FileDescriptor.out), false);

    static synchronized void out(String s) {
        OUT.println(s);
        OUT.flush();
    }

    static final List<CuratorFramework> clients = new ArrayList<>();
    static final List<LeaderLatch> latches = new ArrayList<>();
    static final Set<Integer> open = ConcurrentHashMap.newKeySet();
    static final Set<Integer> pendingJoin = ConcurrentHashMap.newKeySet();

    static synchronized CuratorFramework client(int i) {
        return clients.get(i);
    }

    static synchronized LeaderLatch latch(int i) {
        return latches.get(i);
    }

    static void closeOne(int i) {
        if (!open.remove(i)) {
            return;
        }
        pendingJoin.remove(i);
        try {
            latch(i).close();
        } catch (Exception e) {
            out("err " + i + " close latch: " + e);
        }
        try {
            client(i).close();
        } catch (Exception e) {
            out("err " + i + " close client: " + e);
        }
    }

    public static void main(String[] args) throws Exception {
        ScheduledExecutorService poller = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "join-poller");
            t.setDaemon(true);
            return t;
        });
        poller.scheduleWithFixedDelay(() -> {
            for (Integer i : pendingJoin) {
                try {
                    LeaderLatch l = latch(i);
                    if (l.getOurPath() != null) {
                        long t = System.nanoTime();
                        long sid = client(i).getZookeeperClient().getZooKeeper().getSessionId();
                        pendingJoin.remove(i);
                        out("ev " + t + " " + i + " joined " + Long.toHexString(sid));
                    }
                } catch (Exception e) {
                    // not connected yet; try again
                }
            }
        }, 1, 1, TimeUnit.MILLISECONDS);
        ExecutorService closers = Executors.newFixedThreadPool(64, r -> {
            Thread t = new Thread(r, "closer");
            t.setDaemon(true);
            return t;
        });

        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.trim().split(" ");
            switch (w[0]) {
                case "ping":
                    out("pong " + System.nanoTime());
                    break;
                case "add": {
                    long t0 = System.nanoTime();
                    String tag = w[1];
                    int n = Integer.parseInt(w[2]);
                    String connect = w[3], path = w[4];
                    int sessionMs = Integer.parseInt(w[5]);
                    int first;
                    List<Integer> mine = new ArrayList<>();
                    synchronized (BenchLatch.class) {
                        first = clients.size();
                        for (int k = 0; k < n; k++) {
                            final int idx = first + k;
                            CuratorFramework c = CuratorFrameworkFactory.builder()
                                    .connectString(connect)
                                    .sessionTimeoutMs(sessionMs)
                                    .connectionTimeoutMs(3000)
                                    .retryPolicy(new ExponentialBackoffRetry(100, 10))
                                    .build();
                            LeaderLatch l = new LeaderLatch(c, path, tag + "-" + idx);
                            l.addListener(new LeaderLatchListener() {
                                public void isLeader() {
                                    out("ev " + System.nanoTime() + " " + idx + " leader");
                                }

                                public void notLeader() {
                                    out("ev " + System.nanoTime() + " " + idx + " notleader");
                                }
                            });
                            clients.add(c);
                            latches.add(l);
                            mine.add(idx);
                        }
                    }
                    for (int idx : mine) {
                        try {
                            client(idx).start();
                            latch(idx).start();
                            open.add(idx);
                            pendingJoin.add(idx);
                        } catch (Exception e) {
                            out("err " + idx + " start: " + e);
                        }
                    }
                    out("added " + t0 + " " + first + " " + n);
                    break;
                }
                case "close": {
                    int i = Integer.parseInt(w[1]);
                    out("closing " + System.nanoTime() + " " + i);
                    closeOne(i);
                    out("closed " + System.nanoTime() + " " + i);
                    break;
                }
                case "closeall": {
                    List<Future<?>> fs = new ArrayList<>();
                    for (Integer i : open) {
                        fs.add(closers.submit(() -> closeOne(i)));
                    }
                    for (Future<?> f : fs) {
                        f.get();
                    }
                    out("closedall " + System.nanoTime());
                    break;
                }
                case "leaders": {
                    int count = 0;
                    for (Integer i : open) {
                        if (latch(i).hasLeadership()) {
                            count++;
                        }
                    }
                    out("leaders " + count);
                    break;
                }
                case "quit":
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
