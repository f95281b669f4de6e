// The same settings, tuned: every TCP connection this Node-RED opens (its MQTT
// client's, which sets no option of its own) turns off Nagle's algorithm, so
// a small publish is not held back waiting for the broker's delayed ACK.
const net = require("net");

const createConnection = net.createConnection;
net.createConnection = net.connect = function noDelay(...args) {
    const socket = createConnection.apply(this, args);
    socket.setNoDelay(true);
    socket.once("connect", () => socket.setNoDelay(true));
    return socket;
};

module.exports = require("./settings.js");
