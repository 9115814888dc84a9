//! Shared helpers for the gateway's end-to-end tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use gateway::{Compiled, Config, RunningGateway};

/// Starts a gateway from YAML with `{UPSTREAM}` replaced by `upstream`. Listeners and the admin
/// listener bind port 0.
pub fn start(yaml: &str, upstream: SocketAddr) -> RunningGateway {
    launch(&yaml.replace("{UPSTREAM}", &upstream.to_string()))
}

/// Starts a gateway from YAML as it is.
pub fn launch(yaml: &str) -> RunningGateway {
    let config = Config::parse(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    let compiled = Compiled::new(&config, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    gateway::start(compiled).expect("gateway starts")
}

/// A config with one catch-all route to `{UPSTREAM}` plus `extra` appended at top level.
pub fn simple(extra: &str) -> String {
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nworkers: 2\nupstreams:\n  up:\n    endpoints: [\"{{UPSTREAM}}\"]\n    timeouts: {{ connect: 1s, request: 2s }}\nroutes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: up\n{extra}"
    )
}

/// The first public listener address.
pub fn addr(gw: &RunningGateway) -> SocketAddr {
    gw.listen_addrs()[0]
}

/// `n` distinct free ports (all bound at once, then released), for gateway processes.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The error a configuration fails with (parse or compile, file name `t.yaml`); empty when it
/// compiles.
pub fn config_error(yaml: &str) -> String {
    match Config::parse(yaml, "t.yaml") {
        Err(e) => e.to_string(),
        Ok(c) => Compiled::new(&c, "t.yaml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    }
}
