#!/usr/bin/env python3
"""A reply endpoint for trying Switchboard: accepts every POST with 200 and
prints it (or appends it to LOGFILE). Usage: reply_sink.py PORT [LOGFILE]"""
import http.server
import sys

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
logfile = sys.argv[2] if len(sys.argv) > 2 else None


class Reply(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        line = b"%s %s\n" % (self.headers.get("X-Switchboard-Delivery", "-").encode(), body)
        if logfile:
            with open(logfile, "ab") as f:
                f.write(line)
        else:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", port), Reply).serve_forever()
