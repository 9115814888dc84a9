//! [`TestDns`]: a private DNS server on `127.0.0.1` (UDP and TCP on one port) whose records a
//! test changes while it runs, for discovery tests. It answers A, AAAA, CNAME and SRV questions
//! from its table, compresses answer names (pointers to the question) and puts the addresses of
//! SRV targets in the additional section, like a real recursive resolver would.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

/// A record [`TestDns`] answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// An alias: questions for the name are answered with the target's records too.
    Cname(String),
    /// A service location (RFC 2782).
    Srv {
        /// Lower is preferred.
        priority: u16,
        /// Share among records of one priority.
        weight: u16,
        /// The port.
        port: u16,
        /// The host name.
        target: String,
    },
}

impl Record {
    fn rtype(&self) -> u16 {
        match self {
            Self::A(_) => 1,
            Self::Cname(_) => 5,
            Self::Aaaa(_) => 28,
            Self::Srv { .. } => 33,
        }
    }
}

#[derive(Debug, Default)]
struct Zone {
    names: HashMap<String, (u32, Vec<Record>)>,
    rcode: Option<u8>,
}

#[derive(Debug, Default)]
struct State {
    zone: Mutex<Zone>,
    queries: AtomicUsize,
    tcp_queries: AtomicUsize,
    truncate_udp: AtomicBool,
    no_glue: AtomicBool,
}

/// A DNS server on `127.0.0.1:<free port>`; stops when dropped.
#[derive(Debug)]
pub struct TestDns {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl TestDns {
    /// Starts a server with an empty table (every name is `NXDOMAIN`).
    pub async fn start() -> Self {
        // UDP first, then TCP on the same port (retried if another test holds it).
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
            let addr = udp.local_addr().expect("addr");
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let udp_task = tokio::spawn({
            let state = state.clone();
            async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                        continue;
                    };
                    state.queries.fetch_add(1, Ordering::SeqCst);
                    let truncate = state.truncate_udp.load(Ordering::SeqCst);
                    if let Some(answer) = respond(&state, &buf[..n], truncate) {
                        let _ = udp.send_to(&answer, peer).await;
                    }
                }
            }
        });
        let tcp_task = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    let Ok((mut stream, _)) = tcp.accept().await else {
                        continue;
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let mut len = [0u8; 2];
                        while stream.read_exact(&mut len).await.is_ok() {
                            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                            if stream.read_exact(&mut query).await.is_err() {
                                return;
                            }
                            state.queries.fetch_add(1, Ordering::SeqCst);
                            state.tcp_queries.fetch_add(1, Ordering::SeqCst);
                            let Some(answer) = respond(&state, &query, false) else {
                                return;
                            };
                            let Ok(n) = u16::try_from(answer.len()) else {
                                return;
                            };
                            let mut framed = n.to_be_bytes().to_vec();
                            framed.extend_from_slice(&answer);
                            if stream.write_all(&framed).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self {
            addr,
            state,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// The server's address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces every record of `name` (an empty list: the name exists with no records).
    pub fn set(&self, name: &str, ttl: u32, records: Vec<Record>) {
        let mut zone = self.state.zone.lock().expect("zone");
        zone.names.insert(key(name), (ttl, records));
    }

    /// Removes `name`: questions for it are answered `NXDOMAIN`.
    pub fn remove(&self, name: &str) {
        let mut zone = self.state.zone.lock().expect("zone");
        zone.names.remove(&key(name));
    }

    /// Answers every question with this response code (2: `SERVFAIL`, 5: `REFUSED`), or
    /// normally again with `None`.
    pub fn fail_with(&self, rcode: Option<u8>) {
        self.state.zone.lock().expect("zone").rcode = rcode;
    }

    /// Answers UDP questions with the truncation bit and no records, so clients retry over TCP.
    pub fn truncate_udp(&self, on: bool) {
        self.state.truncate_udp.store(on, Ordering::SeqCst);
    }

    /// Leaves SRV targets' addresses out of answers (`true`), so clients must look them up.
    pub fn without_glue(&self, on: bool) {
        self.state.no_glue.store(on, Ordering::SeqCst);
    }

    /// Questions received so far (UDP and TCP).
    pub fn queries(&self) -> usize {
        self.state.queries.load(Ordering::SeqCst)
    }

    /// Questions received over TCP so far.
    pub fn tcp_queries(&self) -> usize {
        self.state.tcp_queries.load(Ordering::SeqCst)
    }
}

/// The question: (id, name, end of the question, type).
fn parse_query(q: &[u8]) -> Option<(u16, String, usize, u16)> {
    let id = u16::from_be_bytes([*q.first()?, *q.get(1)?]);
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos..pos + len)?).into_owned());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*q.get(pos)?, *q.get(pos + 1)?]);
    Some((id, labels.join("."), pos + 4, qtype))
}

fn push_name(out: &mut Vec<u8>, name: &str) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(u8::try_from(label.len()).expect("label"));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// One resource record; `owner` is either a pointer to the question or a written name.
fn push_record(out: &mut Vec<u8>, owner: Option<&str>, ttl: u32, record: &Record) {
    match owner {
        None => out.extend_from_slice(&[0xC0, 12]),
        Some(name) => push_name(out, name),
    }
    out.extend_from_slice(&record.rtype().to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    let mut data = Vec::new();
    match record {
        Record::A(ip) => data.extend_from_slice(&ip.octets()),
        Record::Aaaa(ip) => data.extend_from_slice(&ip.octets()),
        Record::Cname(target) => push_name(&mut data, target),
        Record::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            data.extend_from_slice(&priority.to_be_bytes());
            data.extend_from_slice(&weight.to_be_bytes());
            data.extend_from_slice(&port.to_be_bytes());
            push_name(&mut data, target);
        }
    }
    out.extend_from_slice(&u16::try_from(data.len()).expect("rdata").to_be_bytes());
    out.extend_from_slice(&data);
}

fn respond(state: &State, query: &[u8], truncate: bool) -> Option<Vec<u8>> {
    let (id, name, question_end, qtype) = parse_query(query)?;
    let zone = state.zone.lock().expect("zone");
    let mut answers: Vec<(Option<String>, u32, Record)> = Vec::new();
    let mut additional: Vec<(String, u32, Record)> = Vec::new();
    let mut rcode = zone.rcode.unwrap_or(0);
    if rcode == 0 && !truncate {
        // Follow aliases (at most 8), answering for each name in the chain.
        let mut current = key(&name);
        let mut first = true;
        for _ in 0..8 {
            let Some((ttl, records)) = zone.names.get(&current) else {
                if first {
                    rcode = 3;
                }
                break;
            };
            let owner = if first { None } else { Some(current.clone()) };
            first = false;
            let alias = records.iter().find_map(|r| match r {
                Record::Cname(t) => Some(t.clone()),
                _ => None,
            });
            for r in records {
                if r.rtype() == qtype || matches!(r, Record::Cname(_)) {
                    answers.push((owner.clone(), *ttl, r.clone()));
                }
                if let Record::Srv { target, .. } = r
                    && qtype == 33
                    && !state.no_glue.load(Ordering::SeqCst)
                    && let Some((t_ttl, glue)) = zone.names.get(&key(target))
                {
                    for g in glue
                        .iter()
                        .filter(|g| matches!(g, Record::A(_) | Record::Aaaa(_)))
                    {
                        additional.push((key(target), *t_ttl, g.clone()));
                    }
                }
            }
            match alias {
                Some(next) => current = key(&next),
                None => break,
            }
        }
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&id.to_be_bytes());
    // QR, RD, RA, and TC when truncating.
    let flags: u16 = 0x8180 | if truncate { 0x0200 } else { 0 } | u16::from(rcode);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::try_from(answers.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&u16::try_from(additional.len()).ok()?.to_be_bytes());
    out.extend_from_slice(query.get(12..question_end)?);
    for (owner, ttl, r) in &answers {
        push_record(&mut out, owner.as_deref(), *ttl, r);
    }
    for (owner, ttl, r) in &additional {
        push_record(&mut out, Some(owner), *ttl, r);
    }
    Some(out)
}
