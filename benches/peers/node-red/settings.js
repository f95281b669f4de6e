// Node-RED settings for the peer of benches/mqtt-peers.sh, as shipped: no
// editor, no admin API and no HTTP nodes (so it opens no HTTP port at all),
// the flow in this folder, the city in memory.
//
// Environment: PAT_CITY_FILE (clients, carers and coverage, written by the
// runner), and what flow.json reads: PAT_EVENTS_TOPIC, PAT_MQTT_PORT,
// PAT_MQTT_CLIENT_ID, PAT_PREFIX. The runner waits for the "Connected to
// broker" line of the info log.
const path = require("path");

module.exports = {
    uiHost: "127.0.0.1",
    httpAdminRoot: false,
    httpNodeRoot: false,
    flowFile: path.join(__dirname, "flow.json"),
    flowFilePretty: true,
    credentialSecret: false,
    // The function node reads the client profiles and carers from here.
    functionGlobalContext: {
        city: JSON.parse(require("fs").readFileSync(process.env.PAT_CITY_FILE, "utf8")),
    },
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false, updateNotification: false },
    logging: { console: { level: "info", metrics: false, audit: false } },
};
