// Waits until a Kafka broker really serves clients: an Admin client must get an answer to a
// metadata request (describeCluster, then listTopics) with the broker in it.
// kafka.sh runs it as a single-file program on the broker's own jars:
//   java -cp "<libs>/*" deploy/kafka/WaitForBroker.java 127.0.0.1:PORT [TIMEOUT_SECONDS]
// Exit 0 once the broker answers, 1 when TIMEOUT_SECONDS (default 60) pass first.
// Progress goes to stderr; stdout stays empty.

import java.time.Duration;
import java.util.Collection;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.common.Node;

public class WaitForBroker {
    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: WaitForBroker HOST:PORT [TIMEOUT_SECONDS]");
            System.exit(2);
        }
        String bootstrap = args[0];
        long timeoutSeconds = args.length > 1 ? Long.parseLong(args[1]) : 60;
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutSeconds);

        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        // Short timeouts and backoffs: we poll a broker that is still starting.
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "2000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "3000");
        props.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, "100");
        props.put(AdminClientConfig.RETRY_BACKOFF_MAX_MS_CONFIG, "200");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "100");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "200");

        String lastError = "no attempt";
        try (Admin admin = Admin.create(props)) {
            while (true) {
                // Each call gets at most 3 s, and never more than what is left.
                long leftMs = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
                if (leftMs <= 0) {
                    break;
                }
                int callMs = (int) Math.min(3000, leftMs);
                try {
                    Collection<Node> nodes = admin
                        .describeCluster(new DescribeClusterOptions().timeoutMs(callMs))
                        .nodes().get(callMs + 500, TimeUnit.MILLISECONDS);
                    if (!nodes.isEmpty()) {
                        admin.listTopics(new ListTopicsOptions().listInternal(true).timeoutMs(callMs))
                            .names().get(callMs + 500, TimeUnit.MILLISECONDS);
                        System.err.println("WaitForBroker: " + bootstrap + " is up: " + nodes);
                        admin.close(Duration.ZERO);
                        System.exit(0);
                    }
                    lastError = "cluster has no live broker yet";
                } catch (Exception e) {
                    lastError = e.toString();
                }
                Thread.sleep(100);
            }
            admin.close(Duration.ZERO);
        }
        System.err.println("WaitForBroker: " + bootstrap + " did not answer within "
            + timeoutSeconds + " s; last error: " + lastError);
        System.exit(1);
    }
}
