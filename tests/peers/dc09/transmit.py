"""SIA DC-09 messages sent by two transmitter implementations we did not write.

Run by tests/pipeline/devices.rs against a live Ping An Tong server:

    transmit.py HOST TCP_PORT UDP_PORT KEY_HEX ENCRYPTED_ACCOUNT PLAIN_ACCOUNT [TLS_PORT CA_PEM]

With TLS_PORT, a few messages also go over TLS (Python's ssl module, i.e.
OpenSSL, checking the server's certificate against CA_PEM for `localhost`).

siadc09 (PyPI) pads encrypted messages with random bytes 0-255 other than
`[`, `]` and `|`, as DC-09-2026 §5.4.4.3 allows; my-dc09-spt (PyPI) with random
characters 0x14-0x7D, control characters included. Each answer is checked by
the same library that built the message (its own CRC, length, sequence and
decryption rules), never by Ping An Tong's code. Prints one JSON line per
message: which library, transport, token, sequence, what it carried, whether
its pad held a byte outside printable ASCII, the answer the library read, and
any error it raised.
"""

import json
import random
import socket
import ssl
import sys

from my_dc09_spt.msg.dc09_msg import dc09_msg
from siadc09 import message as sm
from siadc09.account import Account
from siadc09.util import decrypt
from siadc09.xdata import Data

HOST, TCP_PORT, UDP_PORT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
KEY = bytes.fromhex(sys.argv[4])
ENC_ACCOUNT, PLAIN_ACCOUNT = sys.argv[5], sys.argv[6]
TLS_PORT, CA_PEM = (int(sys.argv[7]), sys.argv[8]) if len(sys.argv) > 8 else (None, None)
TIMEOUT_S = 3

# A fixed seed: the same pads on every run (both libraries draw from `random`).
random.seed(9)


def printable(b):
    return 0x20 <= b < 0x7F


class Tcp:
    def __init__(self):
        self.s = socket.create_connection((HOST, TCP_PORT), timeout=TIMEOUT_S)
        self.buf = b""

    def exchange(self, frame):
        self.s.sendall(frame)
        while b"\r" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                raise RuntimeError("connection closed before an answer")
            self.buf += chunk
        end = self.buf.index(b"\r") + 1
        answer, self.buf = self.buf[:end], self.buf[end:]
        return answer


class TlsTcp(Tcp):
    def __init__(self):
        context = ssl.create_default_context(cafile=CA_PEM)
        raw = socket.create_connection((HOST, TLS_PORT), timeout=TIMEOUT_S)
        self.s = context.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""


class Udp:
    def __init__(self):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.settimeout(TIMEOUT_S)

    def exchange(self, frame):
        self.s.sendto(frame, (HOST, UDP_PORT))
        answer, _ = self.s.recvfrom(4096)
        return answer


def pad_of(frame, key):
    """The pad the library chose: decrypt the frame's ciphertext ourselves
    (with the library's own AES helper) and take what precedes the separator."""
    hexpart = frame[frame.index(b"[") + 1:-1]
    clear = decrypt(key, bytes.fromhex(hexpart.decode()))
    ends = [i for i in (clear.find(b"|"), clear.find(b"]")) if i >= 0]
    return clear[:min(ends)]


def report(**fields):
    print(json.dumps(fields), flush=True)


def siadc09_case(path, transport, token, seq, data, encrypted, account, rcvr=None, pref=0):
    acct = Account(acct=int(account, 16), pref=pref, rcvr=rcvr,
                   key=KEY if encrypted else None)
    msg = sm.Message(acct, config={"idtoken": token, "seqno": seq})
    if data is not None:
        msg.data = Data(data.encode())
    if token == "NULL":
        msg = sm.NullMessage(acct, encrypted=encrypted, seqno=seq)
    # A plain message carries a timestamp too, so the receiver's window applies.
    msg.timestamp = sm.now()
    frame = msg.encode(encrypt=encrypted)
    binary_pad = encrypted and not all(printable(b) for b in pad_of(frame, KEY))
    fields = dict(impl="siadc09", transport=transport, token=token, seq=seq,
                  data=data, encrypted=encrypted, account=account,
                  binary_pad=binary_pad)
    try:
        raw = path.exchange(frame)
        answer = sm.parse_frame(raw, keys=KEY if encrypted else None)
        report(**fields, answer=answer.idtoken, answer_seq=answer.seq,
               answer_encrypted=answer.encrypted,
               answer_account="%X" % answer.account.acct,
               answer_rcvr=answer.account.rcvr, answer_pref=answer.account.pref,
               rcvr=rcvr, pref=pref, expect="ACK")
    except Exception as e:  # the library refused our answer: say why
        report(**fields, answer=None, expect="ACK",
               error="%s: %s" % (type(e).__name__, e))


def spt_case(path, transport, token, seq, data, encrypted, account,
             expect="ACK", offset=0):
    # offset: the transmitter's clock against the receiver's, in seconds.
    block = dc09_msg(account, key=KEY if encrypted else None, line=0, offset=offset)
    frame = block.dc09block(seq, token, data + "]" if data is not None else "]")
    raw_frame = frame.encode("latin-1")
    binary_pad = encrypted and not all(printable(b) for b in pad_of(raw_frame, KEY))
    fields = dict(impl="my-dc09-spt", transport=transport, token=token, seq=seq,
                  data=data, encrypted=encrypted, account=account,
                  binary_pad=binary_pad)
    try:
        raw = path.exchange(raw_frame)
        kind, _offset = block.dc09answer(seq, raw.decode("latin-1"))
        report(**fields, answer=kind, expect=expect)
    except Exception as e:
        report(**fields, answer=None, expect=expect,
               error="%s: %s" % (type(e).__name__, e))


def cid(account, code):
    return "#%s|%s" % (account, code)


def main():
    tcp, udp = Tcp(), Udp()
    enc, plain = ENC_ACCOUNT, PLAIN_ACCOUNT
    seq = 100
    # Encrypted SOS (Contact ID 101) and medical (100) alarms, many pads each.
    for i in range(12):
        seq += 1
        path, name = (tcp, "tcp") if i % 3 else (udp, "udp")
        code = "1101 01 001" if i % 2 else "1100 01 002"
        siadc09_case(path, name, "ADM-CID", seq, cid(enc, code), True, enc)
    for i in range(12):
        seq += 1
        path, name = (tcp, "tcp") if i % 3 else (udp, "udp")
        code = "1101 01 003" if i % 2 else "1100 01 004"
        spt_case(path, name, "ADM-CID", seq, cid(enc, code), True, enc)
    # SIA-DCS panic, encrypted, and link tests (NULL) with their pads.
    seq += 1
    siadc09_case(tcp, "tcp", "SIA-DCS", seq, "#%s|Nri1/PA501" % enc, True, enc)
    seq += 1
    spt_case(udp, "udp", "SIA-DCS", seq, "#%s|Nri1/PA502" % enc, True, enc)
    seq += 1
    siadc09_case(tcp, "tcp", "NULL", seq, None, True, enc)
    seq += 1
    spt_case(udp, "udp", "NULL", seq, None, True, enc)
    # Plain messages from an account with no key.
    seq += 1
    siadc09_case(tcp, "tcp", "ADM-CID", seq, cid(plain, "1101 01 005"), False, plain)
    seq += 1
    spt_case(udp, "udp", "SIA-DCS", seq, "#%s|Nri1/MA001" % plain, False, plain)
    seq += 1
    siadc09_case(udp, "udp", "NULL", seq, None, False, plain)
    # A panel whose counter restarted: a periodic test, then an SOS, both with
    # sequence number 3010. Two events: both must be stored.
    siadc09_case(tcp, "tcp", "ADM-CID", 3010, cid(enc, "1602 00 000"), True, enc)
    siadc09_case(tcp, "tcp", "ADM-CID", 3010, cid(enc, "1101 01 010"), True, enc)
    # A retransmission (the panel missed our ACK): the same event, a new pad and
    # timestamp, the same sequence number. One event: stored once.
    spt_case(tcp, "tcp", "ADM-CID", 3020, cid(enc, "1101 01 011"), True, enc)
    spt_case(tcp, "tcp", "ADM-CID", 3020, cid(enc, "1101 01 011"), True, enc)
    # Receiver number and account prefix are echoed exactly (§5.5.1.6).
    siadc09_case(tcp, "tcp", "ADM-CID", 3030, cid(enc, "1101 01 012"), True, enc,
                 rcvr=0x579BDF, pref=0x789ABC)
    # A transmitter clock an hour behind: NAK with the receiver's time (§5.5.1.8).
    spt_case(tcp, "tcp", "ADM-CID", 3040, cid(enc, "1101 01 013"), True, enc,
             expect="NAK", offset=-3600)
    # A message type the receiver does not process: DUH (§5.5.1.7).
    spt_case(udp, "udp", "ACR-SF", 3050, "#%s|foo" % plain, False, plain, expect="DUH")
    # Over TLS: an encrypted SOS and a plain panic, one from each library.
    if TLS_PORT is not None:
        tls = TlsTcp()
        siadc09_case(tls, "tls", "ADM-CID", 4001, cid(enc, "1101 01 020"), True, enc)
        spt_case(tls, "tls", "SIA-DCS", 4002, "#%s|Nri1/PA503" % plain, False, plain)


if __name__ == "__main__":
    main()
