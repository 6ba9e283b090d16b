import java.io.BufferedReader;
import java.io.File;
import java.io.FileWriter;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.PrintWriter;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import javax.swing.ListModel;
import javax.swing.SwingUtilities;
import uk.ac.starlink.topcat.ControlWindow;
import uk.ac.starlink.topcat.TopcatModel;
import uk.ac.starlink.topcat.activate.ActivationWindow;

/**
 * Test harness: starts the unmodified TOPCAT (through TopcatRemote when it is on the
 * class path, so its control port is there too) and adds a loopback control port for
 * what a user does in the Activation Actions window: choose an action and click a row.
 * Property topcat.activation.portfile names the file that receives the port. Commands,
 * one line each, answered with one line of JSON:
 *
 *   state ID                 the table's activation state (TOPCAT's own maps)
 *   invoke-service ID ACTION tick Invoke Service with ACTION (e.g. "Load Table") and its
 *                            default service (the first descriptor), untick the others
 *   activate ID ROW          click a row: TOPCAT runs the ticked activation actions
 *   tables                   id, label, rows and column names of every loaded table
 */
public class TopcatActivation {

    public static void main(String[] args) throws Exception {
        try {
            Class.forName("TopcatRemote").getMethod("main", String[].class)
                 .invoke(null, (Object) args);
        } catch (ClassNotFoundException e) {
            uk.ac.starlink.topcat.Driver.main(args);
        }
        ServerSocket server = new ServerSocket(0, 10, InetAddress.getByName("127.0.0.1"));
        String portFile = System.getProperty("topcat.activation.portfile");
        if (portFile != null) {
            File tmp = new File(portFile + ".tmp");
            try (FileWriter w = new FileWriter(tmp)) {
                w.write(server.getLocalPort() + "\n");
            }
            tmp.renameTo(new File(portFile));
        }
        Thread t = new Thread(() -> {
            while (true) {
                try (Socket s = server.accept();
                     BufferedReader in = new BufferedReader(new InputStreamReader(
                         s.getInputStream(), StandardCharsets.UTF_8));
                     PrintWriter out = new PrintWriter(new OutputStreamWriter(
                         s.getOutputStream(), StandardCharsets.UTF_8), true)) {
                    String line;
                    while ((line = in.readLine()) != null) {
                        String resp;
                        try {
                            resp = onEdt(line.trim());
                        } catch (Throwable e) {
                            Throwable c = e.getCause() != null ? e.getCause() : e;
                            resp = "{\"ok\":false,\"error\":" + q(c.toString()) + "}";
                        }
                        out.println(resp);
                    }
                } catch (Exception e) {
                    System.err.println("TopcatActivation: " + e);
                }
            }
        }, "TopcatActivation");
        t.setDaemon(true);
        t.start();
    }

    private static String onEdt(String line) throws Exception {
        AtomicReference<Object> res = new AtomicReference<>();
        SwingUtilities.invokeAndWait(() -> {
            try {
                res.set(handle(line.split("\\s+", 3)));
            } catch (Exception e) {
                res.set(e);
            }
        });
        if (res.get() instanceof Exception) {
            throw (Exception) res.get();
        }
        return (String) res.get();
    }

    private static String handle(String[] w) throws Exception {
        switch (w[0]) {
        case "tables": {
            StringBuilder sb = new StringBuilder("{\"ok\":true,\"tables\":[");
            ListModel<TopcatModel> lm = ControlWindow.getInstance().getTablesListModel();
            for (int i = 0; i < lm.getSize(); i++) {
                TopcatModel m = lm.getElementAt(i);
                if (i > 0) sb.append(',');
                sb.append("{\"id\":").append(m.getID())
                  .append(",\"label\":").append(q(m.getLabel()))
                  .append(",\"rows\":").append(m.getDataModel().getRowCount())
                  .append(",\"columns\":[");
                for (int c = 0; c < m.getDataModel().getColumnCount(); c++) {
                    if (c > 0) sb.append(',');
                    sb.append(q(m.getDataModel().getColumnInfo(c).getName()));
                }
                sb.append("]}");
            }
            return sb.append("]}").toString();
        }
        case "state":
            return "{\"ok\":true,\"state\":" + json(window(w[1]).getActivationState()) + "}";
        case "invoke-service": {
            ActivationWindow aw = window(w[1]);
            List<Map<String, String>> state = aw.getActivationState();
            for (Map<String, String> entry : state) {
                entry.remove("_isActive");
                if (entry.getOrDefault("_ActivationType", "").endsWith(".ServiceActivationType")) {
                    entry.put("action", w[2]);
                    entry.put("_isActive", "true");
                }
            }
            aw.setActivationState(state);
            return "{\"ok\":true,\"state\":" + json(aw.getActivationState()) + "}";
        }
        case "activate": {
            TopcatModel m = model(w[1]);
            m.highlightRow(Long.parseLong(w[2]));
            return "{\"ok\":true}";
        }
        default:
            return "{\"ok\":false,\"error\":" + q("unknown command " + w[0]) + "}";
        }
    }

    private static TopcatModel model(String id) {
        ListModel<TopcatModel> lm = ControlWindow.getInstance().getTablesListModel();
        for (int i = 0; i < lm.getSize(); i++) {
            if (lm.getElementAt(i).getID() == Integer.parseInt(id)) {
                return lm.getElementAt(i);
            }
        }
        throw new IllegalArgumentException("no table with ID " + id);
    }

    private static ActivationWindow window(String id) {
        return model(id).getActivationWindow();
    }

    private static String json(List<Map<String, String>> state) {
        StringBuilder sb = new StringBuilder("[");
        for (int i = 0; i < state.size(); i++) {
            if (i > 0) sb.append(',');
            sb.append('{');
            int j = 0;
            for (Map.Entry<String, String> e : state.get(i).entrySet()) {
                if (j++ > 0) sb.append(',');
                sb.append(q(e.getKey())).append(':').append(q(e.getValue()));
            }
            sb.append('}');
        }
        return sb.append(']').toString();
    }

    private static String q(String s) {
        if (s == null) return "null";
        StringBuilder sb = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') sb.append('\\').append(c);
            else if (c < 0x20) sb.append(String.format("\\u%04x", (int) c));
            else sb.append(c);
        }
        return sb.append('"').toString();
    }
}
