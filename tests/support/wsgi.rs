//! A CGI-style app behind the gateway: Python's own `wsgiref` server, which (like PHP-FPM
//! and most WSGI servers) maps both `-` and `_` in a header name to `_` in the variable
//! `HTTP_…`, and joins two headers that map to one variable with `,`. It answers every
//! request with the JSON object of its `HTTP_*` variables.
//!
//! Without `python3` the tests that need it are skipped with a loud message, except under
//! `CI=true`, where that is a failure.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The app, as the WSGI server runs it.
const APP: &str = r#"
import json, sys
from wsgiref.simple_server import make_server, WSGIRequestHandler

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app(environ, start_response):
    seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]

server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A running WSGI server; killed on drop.
pub struct Wsgi {
    pub port: u16,
    child: Child,
}

impl Drop for Wsgi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Wsgi {
    /// Starts the server, or returns `None` (after a loud message) when `python3` is missing.
    pub fn start() -> Option<Wsgi> {
        let spawned = Command::new("python3")
            .arg("-c")
            .arg(APP)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("python3 cannot be run ({e}), and CI=true: install python3");
                }
                eprintln!(
                    "\n=====================================================================\n\
                     SKIPPED: python3 cannot be run ({e}), so the WSGI test did not run.\n\
                     =====================================================================\n"
                );
                return None;
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the WSGI server's port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("WSGI server printed {line:?}, not its port"));
        Some(Wsgi { port, child })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
