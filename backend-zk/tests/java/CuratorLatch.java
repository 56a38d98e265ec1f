// A real Curator LeaderLatch participant for the interop tests (compiled by the test run
// against Debian's libcurator-recipes-java). Prints one line per event on stdout:
// "started", "leader", "follower", "closed". Reads commands on stdin: "close", "status".
import java.io.BufferedReader;
import java.io.InputStreamReader;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderLatchListener;
import org.apache.curator.retry.ExponentialBackoffRetry;

public class CuratorLatch {
    static synchronized void out(String s) {
        System.out.println(s);
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        String connect = args[0], path = args[1], id = args[2];
        CuratorFramework client = CuratorFrameworkFactory.builder()
                .connectString(connect)
                .sessionTimeoutMs(6000)
                .connectionTimeoutMs(3000)
                .retryPolicy(new ExponentialBackoffRetry(100, 10))
                .build();
        client.start();
        LeaderLatch latch = new LeaderLatch(client, path, id);
        latch.addListener(new LeaderLatchListener() {
            public void isLeader() { out("leader"); }
            public void notLeader() { out("follower"); }
        });
        latch.start();
        out("started");
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            if (line.equals("close")) {
                latch.close();
                client.close();
                out("closed");
                System.exit(0);
            } else if (line.equals("status")) {
                out(latch.hasLeadership() ? "is-leader" : "not-leader");
            }
        }
        latch.close();
        client.close();
    }
}
