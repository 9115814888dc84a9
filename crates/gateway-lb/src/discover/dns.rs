//! A small DNS stub resolver for discovery: A, AAAA and SRV questions over UDP (with TCP when an
//! answer is truncated), answers' TTLs kept.
//!
//! The system resolver (`getaddrinfo`, `tokio::net::lookup_host`) hides TTLs and cannot ask for
//! SRV records, so discovery asks the configured name servers itself. It is a stub: it sends
//! recursive questions to the servers in `/etc/resolv.conf` (or the ones given) and trusts their
//! answers, like the C library does.
//!
//! Hostile answers are expected: every read is bounds-checked, compression pointers may only
//! point backwards and are followed a bounded number of times, an answer must carry the
//! question's id and echo its question (from the server the question went to: sockets are
//! connected), and records for names other than the question (or its aliases) are ignored.
//! Each question uses a fresh socket (a random source port) and a random id.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;
/// EDNS(0) payload size advertised: the DNS flag day 2020 value, which avoids fragmentation.
const UDP_PAYLOAD: u16 = 1232;
/// Aliases followed before giving up.
const MAX_CNAME_HOPS: usize = 8;
/// Compression pointers followed within one name.
const MAX_POINTERS: usize = 16;

/// Which address records to ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Family {
    /// A and AAAA (default).
    #[default]
    Any,
    /// A only.
    V4,
    /// AAAA only.
    V6,
}

/// Why a lookup failed.
#[derive(Debug)]
pub enum DnsError {
    /// The name is not a valid DNS name.
    InvalidName(String),
    /// No name server to ask (none given and none in `/etc/resolv.conf`).
    NoServers,
    /// No answer from any server in time.
    Timeout,
    /// A socket error.
    Io(std::io::Error),
    /// The name does not exist (`NXDOMAIN`).
    NxDomain(String),
    /// The server answered with an error code (2 `SERVFAIL`, 5 `REFUSED`, ...).
    Rcode(u8),
    /// The answer could not be read.
    Malformed(&'static str),
    /// The name exists but has no usable records (no addresses, or only SRV targets `.`).
    NoRecords(String),
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName(n) => write!(f, "`{n}` is not a valid DNS name"),
            Self::NoServers => {
                f.write_str("no name server: none given and none in /etc/resolv.conf")
            }
            Self::Timeout => f.write_str("no answer from any name server in time"),
            Self::Io(e) => write!(f, "DNS socket error: {e}"),
            Self::NxDomain(n) => write!(f, "`{n}` does not exist (NXDOMAIN)"),
            Self::Rcode(2) => f.write_str("the name server failed (SERVFAIL)"),
            Self::Rcode(5) => f.write_str("the name server refused the question (REFUSED)"),
            Self::Rcode(c) => write!(f, "the name server answered with error code {c}"),
            Self::Malformed(why) => write!(f, "malformed DNS answer: {why}"),
            Self::NoRecords(n) => write!(f, "`{n}` has no usable records"),
        }
    }
}

impl std::error::Error for DnsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Addresses and how long they may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// The addresses, in answer order (A before AAAA).
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of the records used (aliases included); `None` when there were none.
    pub ttl: Option<Duration>,
}

/// One SRV target with its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    /// Lower is preferred (RFC 2782).
    pub priority: u16,
    /// Share among targets of one priority.
    pub weight: u16,
    /// The port.
    pub port: u16,
    /// The target host.
    pub target: String,
    /// Its addresses (from the additional section, else looked up).
    pub addrs: Vec<IpAddr>,
}

/// SRV targets and how long they may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Services {
    /// The targets, in answer order.
    pub targets: Vec<SrvTarget>,
    /// The smallest TTL of the records used; `None` when there were none.
    pub ttl: Option<Duration>,
}

/// A stub resolver: which servers to ask, how long to wait.
#[derive(Clone, Debug)]
pub struct DnsResolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: usize,
}

impl DnsResolver {
    /// Asks these servers, in order (port 53 unless given).
    pub fn new(servers: Vec<SocketAddr>) -> Self {
        Self {
            servers,
            timeout: Duration::from_secs(2),
            attempts: 2,
        }
    }

    /// The `nameserver` lines of `/etc/resolv.conf`.
    pub fn from_system() -> Result<Self, DnsError> {
        let text = std::fs::read_to_string("/etc/resolv.conf").map_err(DnsError::Io)?;
        let servers = parse_resolv_conf(&text);
        if servers.is_empty() {
            return Err(DnsError::NoServers);
        }
        Ok(Self::new(servers))
    }

    /// How long to wait for each answer (default 2 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times each server is asked before the next (default 2).
    #[must_use]
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The servers asked.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The A and/or AAAA records of `name` (aliases followed). A name without such records
    /// gives no addresses; a name that does not exist is [`DnsError::NxDomain`].
    pub async fn lookup_ip(&self, name: &str, family: Family) -> Result<Addresses, DnsError> {
        let mut out = Addresses {
            addrs: Vec::new(),
            ttl: None,
        };
        let types: &[u16] = match family {
            Family::Any => &[TYPE_A, TYPE_AAAA],
            Family::V4 => &[TYPE_A],
            Family::V6 => &[TYPE_AAAA],
        };
        // With both families, one that fails (a resolver that mishandles AAAA, say) does not
        // throw away the other's answer; both failing is the first one's error.
        let mut first_error = None;
        for &qtype in types {
            let answer = match self.query(name, qtype).await {
                Ok(answer) => answer,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            out.ttl = min_ttl(out.ttl, answer.ttl);
            out.addrs
                .extend(answer.records.into_iter().filter_map(|r| match r {
                    Rdata::Ip(ip) => Some(ip),
                    Rdata::Srv { .. } => None,
                }));
        }
        match first_error {
            Some(e) if out.ttl.is_none() && out.addrs.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// The SRV records of `name` (`_service._proto.domain`) of the lowest priority, with their
    /// targets' addresses (RFC 2782's lower tiers are fallbacks, not looked up). Targets named
    /// `.` (service not offered) are left out; a target whose addresses cannot be looked up is
    /// skipped (logged) as long as another one resolves.
    pub async fn lookup_srv(&self, name: &str, family: Family) -> Result<Services, DnsError> {
        let answer = self.query(name, TYPE_SRV).await?;
        let mut ttl = answer.ttl;
        let mut targets = Vec::new();
        let best = answer
            .records
            .iter()
            .filter_map(|r| match r {
                Rdata::Srv {
                    priority, target, ..
                } if !target.is_empty() => Some(*priority),
                _ => None,
            })
            .min();
        let mut first_error = None;
        for record in answer.records {
            let Rdata::Srv {
                priority,
                weight,
                port,
                target,
            } = record
            else {
                continue;
            };
            if target.is_empty() || Some(priority) != best {
                continue;
            }
            let mut addrs: Vec<IpAddr> = answer
                .glue
                .iter()
                .filter(|(owner, ip)| *owner == target && family.allows(ip))
                .map(|(_, ip)| *ip)
                .collect();
            if addrs.is_empty() {
                match self.lookup_ip(&target, family).await {
                    Ok(looked_up) => {
                        ttl = min_ttl(ttl, looked_up.ttl);
                        addrs = looked_up.addrs;
                    }
                    Err(e) => {
                        tracing::warn!(%target, error = %e, "an SRV target could not be resolved; skipped");
                        first_error.get_or_insert(e);
                        continue;
                    }
                }
            } else {
                ttl = min_ttl(ttl, answer.glue_ttl);
            }
            targets.push(SrvTarget {
                priority,
                weight,
                port,
                target,
                addrs,
            });
        }
        match first_error {
            Some(e) if targets.is_empty() => Err(e),
            _ => Ok(Services { targets, ttl }),
        }
    }

    /// One question, asked of each server in turn until one answers.
    async fn query(&self, name: &str, qtype: u16) -> Result<Answer, DnsError> {
        let qname = normalize_name(name)?;
        if self.servers.is_empty() {
            return Err(DnsError::NoServers);
        }
        let mut last = DnsError::Timeout;
        for server in &self.servers {
            for _ in 0..self.attempts {
                let id = random_id();
                let query = encode_query(id, &qname, qtype);
                match self.exchange(*server, &query, id, &qname, qtype).await {
                    Ok(answer) => return Ok(answer),
                    // A definite answer is not retried elsewhere.
                    Err(e @ DnsError::NxDomain(_)) => return Err(e),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    async fn exchange(
        &self,
        server: SocketAddr,
        query: &[u8],
        id: u16,
        qname: &str,
        qtype: u16,
    ) -> Result<Answer, DnsError> {
        let udp = async {
            let bind: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(bind).await?;
            // Connected: datagrams from anywhere else are dropped by the kernel.
            socket.connect(server).await?;
            socket.send(query).await?;
            // Room for any datagram: a server that ignores EDNS may send more than we offered.
            let mut buf = vec![0u8; 65_535];
            let mut last = None;
            loop {
                let n = match socket.recv(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => return Ok::<_, std::io::Error>(last.unwrap_or(Err(DnsError::Io(e)))),
                };
                // Answers to other questions (late, or forged) and datagrams that cannot be
                // read are ignored until the timeout; a definite answer ends the wait.
                match decode_answer(&buf[..n], id, qname, qtype) {
                    Ok(Some(answer)) => return Ok(Ok(answer)),
                    Ok(None) => {}
                    Err(e @ (DnsError::NxDomain(_) | DnsError::Rcode(_))) => return Ok(Err(e)),
                    Err(e) => last = Some(Err(e)),
                }
            }
        };
        let answer = match tokio::time::timeout(self.timeout, udp).await {
            Err(_) => return Err(DnsError::Timeout),
            Ok(Err(e)) => return Err(DnsError::Io(e)),
            Ok(Ok(answer)) => answer?,
        };
        if !answer.truncated {
            return Ok(answer);
        }
        let tcp = async {
            let mut stream = TcpStream::connect(server).await?;
            let len = u16::try_from(query.len()).unwrap_or(u16::MAX);
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(query);
            stream.write_all(&framed).await?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let buf = match tokio::time::timeout(self.timeout, tcp).await {
            Err(_) => return Err(DnsError::Timeout),
            Ok(Err(e)) => return Err(DnsError::Io(e)),
            Ok(Ok(buf)) => buf,
        };
        decode_answer(&buf, id, qname, qtype)?.ok_or(DnsError::Malformed("not our question"))
    }
}

impl Family {
    fn allows(self, ip: &IpAddr) -> bool {
        match self {
            Self::Any => true,
            Self::V4 => ip.is_ipv4(),
            Self::V6 => ip.is_ipv6(),
        }
    }
}

/// An unpredictable query id (RFC 5452 §9.2): `RandomState`'s keys come from the operating
/// system's random source, so its hash of a counter cannot be guessed from the clock.
fn random_id() -> u16 {
    use std::hash::BuildHasher;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (std::collections::hash_map::RandomState::new().hash_one(n) & 0xFFFF) as u16
}

fn min_ttl(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `nameserver` addresses (port 53); scoped IPv6 addresses (`%eth0`) are skipped.
fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Lower-case, without the trailing dot; labels of 1 to 63 letters, digits, `-` or `_`, 253
/// bytes at most.
fn normalize_name(name: &str) -> Result<String, DnsError> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(bare.to_ascii_lowercase())
    } else {
        Err(DnsError::InvalidName(name.to_owned()))
    }
}

fn encode_query(id: u16, qname: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + qname.len());
    q.extend_from_slice(&id.to_be_bytes());
    // Recursion desired.
    q.extend_from_slice(&0x0100u16.to_be_bytes());
    // One question, one additional record (the EDNS OPT).
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    for label in qname.split('.') {
        // Labels were checked to be 1..=63 bytes.
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    // OPT: root owner, payload size as class, no extended flags, no options.
    q.push(0);
    q.extend_from_slice(&TYPE_OPT.to_be_bytes());
    q.extend_from_slice(&UDP_PAYLOAD.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    q
}

#[derive(Debug, PartialEq, Eq)]
enum Rdata {
    Ip(IpAddr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

#[derive(Debug)]
struct Answer {
    truncated: bool,
    /// Records of the question's type owned by the question's name or one of its aliases.
    records: Vec<Rdata>,
    /// The smallest TTL of those records and the aliases followed.
    ttl: Option<Duration>,
    /// A/AAAA records of other names (SRV targets' addresses).
    glue: Vec<(String, IpAddr)>,
    glue_ttl: Option<Duration>,
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DnsError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DnsError::Malformed("length"))?;
        let out = self
            .msg
            .get(self.pos..end)
            .ok_or(DnsError::Malformed("cut short"))?;
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, DnsError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DnsError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A possibly compressed name, lower-cased, without the trailing dot (the root is `""`).
    fn name(&mut self) -> Result<String, DnsError> {
        let (name, end) = read_name(self.msg, self.pos)?;
        self.pos = end;
        Ok(name)
    }
}

/// Reads the name at `start`; returns it and where the record continues.
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut pos = start;
    let mut resume = None;
    let mut pointers = 0;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Malformed("cut short"))?;
        match len {
            0 => {
                return Ok((name, resume.unwrap_or(pos + 1)));
            }
            1..=63 => {
                let label = msg
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or(DnsError::Malformed("cut short"))?;
                // A label holding a dot would make two names compare equal.
                if label.contains(&b'.') {
                    return Err(DnsError::Malformed("a label holds a dot"));
                }
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    name.push(char::from(b.to_ascii_lowercase()));
                }
                if name.len() > 255 {
                    return Err(DnsError::Malformed("name too long"));
                }
                pos += 1 + usize::from(len);
            }
            0xC0..=0xFF => {
                let low = *msg.get(pos + 1).ok_or(DnsError::Malformed("cut short"))?;
                let target = (usize::from(len & 0x3F) << 8) | usize::from(low);
                pointers += 1;
                // Only backwards, and not forever.
                if target >= pos || pointers > MAX_POINTERS {
                    return Err(DnsError::Malformed("bad compression pointer"));
                }
                resume.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(DnsError::Malformed("unknown label type")),
        }
    }
}

/// `Ok(None)`: an answer to another question (ignored).
fn decode_answer(msg: &[u8], id: u16, qname: &str, qtype: u16) -> Result<Option<Answer>, DnsError> {
    let mut r = Reader { msg, pos: 0 };
    if r.u16()? != id {
        return Ok(None);
    }
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Ok(None);
    }
    let (qd, an, ns, ar) = (r.u16()?, r.u16()?, r.u16()?, r.u16()?);
    if qd != 1 {
        return Ok(None);
    }
    let echoed = r.name()?;
    let (echoed_type, _class) = (r.u16()?, r.u16()?);
    if echoed != qname || echoed_type != qtype {
        return Ok(None);
    }
    let rcode = (flags & 0x000F) as u8;
    match rcode {
        0 => {}
        3 => return Err(DnsError::NxDomain(qname.to_owned())),
        c => return Err(DnsError::Rcode(c)),
    }
    if flags & 0x0200 != 0 {
        // Truncated: whatever follows may be cut anywhere; the question is asked over TCP.
        return Ok(Some(Answer {
            truncated: true,
            records: Vec::new(),
            ttl: None,
            glue: Vec::new(),
            glue_ttl: None,
        }));
    }
    // Every record: (owner, type, ttl, rdata start, rdata len); section boundary kept.
    let mut cnames: Vec<(String, String, u32)> = Vec::new();
    let mut found: Vec<(String, u32, Rdata)> = Vec::new();
    let mut extra: Vec<(String, u32, IpAddr)> = Vec::new();
    let total = usize::from(an) + usize::from(ns) + usize::from(ar);
    for i in 0..total {
        let owner = r.name()?;
        let (rtype, _class) = (r.u16()?, r.u16()?);
        // RFC 2181 §8: a TTL with the top bit set is zero.
        let ttl = r.u32()?;
        let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
        let len = usize::from(r.u16()?);
        let start = r.pos;
        let data = r.bytes(len)?;
        let in_answer = i < usize::from(an);
        let ip = match (rtype, len) {
            (TYPE_A, 4) => Some(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (TYPE_AAAA, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(data);
                Some(IpAddr::V6(Ipv6Addr::from(o)))
            }
            (TYPE_A | TYPE_AAAA, _) => return Err(DnsError::Malformed("address length")),
            _ => None,
        };
        match (rtype, ip) {
            (_, Some(ip)) if in_answer && rtype == qtype => found.push((owner, ttl, Rdata::Ip(ip))),
            (_, Some(ip)) => extra.push((owner, ttl, ip)),
            (TYPE_CNAME, None) if in_answer => {
                let (target, _) = read_name(msg, start)?;
                cnames.push((owner, target, ttl));
            }
            (TYPE_SRV, None) if in_answer && qtype == TYPE_SRV => {
                let mut d = Reader { msg, pos: start };
                let (priority, weight, port) = (d.u16()?, d.u16()?, d.u16()?);
                let target = d.name()?;
                if d.pos != start + len {
                    return Err(DnsError::Malformed("SRV length"));
                }
                found.push((
                    owner,
                    ttl,
                    Rdata::Srv {
                        priority,
                        weight,
                        port,
                        target,
                    },
                ));
            }
            _ => {}
        }
    }
    // The question's name and its aliases, in order.
    let mut chain = vec![qname.to_owned()];
    let mut ttl: Option<u32> = None;
    for _ in 0..MAX_CNAME_HOPS {
        let Some(last) = chain.last() else { break };
        let Some((_, target, t)) = cnames.iter().find(|(o, _, _)| o == last) else {
            break;
        };
        if chain.contains(target) {
            return Err(DnsError::Malformed("alias loop"));
        }
        ttl = Some(ttl.map_or(*t, |m| m.min(*t)));
        chain.push(target.clone());
    }
    let mut records = Vec::new();
    for (owner, t, data) in found {
        if chain.contains(&owner) {
            ttl = Some(ttl.map_or(t, |m| m.min(t)));
            records.push(data);
        }
    }
    let mut glue_ttl: Option<u32> = None;
    let glue = extra
        .into_iter()
        .map(|(owner, t, ip)| {
            glue_ttl = Some(glue_ttl.map_or(t, |m| m.min(t)));
            (owner, ip)
        })
        .collect();
    let secs = |t: Option<u32>| t.map(|t| Duration::from_secs(u64::from(t)));
    Ok(Some(Answer {
        truncated: false,
        records,
        ttl: secs(ttl),
        glue,
        glue_ttl: secs(glue_ttl),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_test::dns::{Record, TestDns};

    fn resolver(dns: &TestDns) -> DnsResolver {
        DnsResolver::new(vec![dns.addr()]).timeout(Duration::from_secs(5))
    }

    #[tokio::test]
    async fn a_and_aaaa_records_come_with_the_smallest_ttl() {
        let dns = TestDns::start().await;
        dns.set(
            "api.test",
            30,
            vec![
                Record::A("10.0.0.1".parse().unwrap()),
                Record::A("10.0.0.2".parse().unwrap()),
                Record::Aaaa("fd00::1".parse().unwrap()),
            ],
        );
        let got = resolver(&dns)
            .lookup_ip("API.test.", Family::Any)
            .await
            .unwrap();
        let want: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2", "fd00::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got.addrs, want);
        assert_eq!(got.ttl, Some(Duration::from_secs(30)));
        let v4 = resolver(&dns)
            .lookup_ip("api.test", Family::V4)
            .await
            .unwrap();
        assert_eq!(v4.addrs, want[..2]);
        let v6 = resolver(&dns)
            .lookup_ip("api.test", Family::V6)
            .await
            .unwrap();
        assert_eq!(v6.addrs, want[2..]);
    }

    #[tokio::test]
    async fn aliases_are_followed_and_their_ttl_counts() {
        let dns = TestDns::start().await;
        dns.set("www.test", 5, vec![Record::Cname("edge.test".into())]);
        dns.set(
            "edge.test",
            60,
            vec![Record::A("10.0.0.9".parse().unwrap())],
        );
        let got = resolver(&dns)
            .lookup_ip("www.test", Family::V4)
            .await
            .unwrap();
        assert_eq!(got.addrs, vec!["10.0.0.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(got.ttl, Some(Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn srv_targets_use_glue_or_are_looked_up() {
        let dns = TestDns::start().await;
        dns.set(
            "_http._tcp.api.test",
            20,
            vec![
                Record::Srv {
                    priority: 1,
                    weight: 3,
                    port: 8080,
                    target: "a.test".into(),
                },
                Record::Srv {
                    priority: 1,
                    weight: 1,
                    port: 8081,
                    target: "b.test".into(),
                },
            ],
        );
        dns.set("a.test", 10, vec![Record::A("10.0.0.1".parse().unwrap())]);
        dns.set("b.test", 40, vec![Record::A("10.0.0.2".parse().unwrap())]);
        let got = resolver(&dns)
            .lookup_srv("_http._tcp.api.test", Family::Any)
            .await
            .unwrap();
        assert_eq!(got.targets.len(), 2);
        assert_eq!(
            (
                got.targets[0].port,
                got.targets[0].weight,
                &got.targets[0].addrs[..]
            ),
            (8080, 3, &["10.0.0.1".parse::<IpAddr>().unwrap()][..])
        );
        assert_eq!(
            got.targets[1].addrs,
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(got.ttl, Some(Duration::from_secs(10)));
    }

    #[tokio::test]
    async fn srv_targets_without_glue_are_looked_up_and_broken_ones_skipped() {
        let dns = TestDns::start().await;
        dns.without_glue(true);
        let srv = |priority, port, target: &str| Record::Srv {
            priority,
            weight: 1,
            port,
            target: target.into(),
        };
        dns.set(
            "_http._tcp.api.test",
            60,
            vec![
                srv(1, 8080, "a.test"),
                srv(1, 8081, "gone.test"),
                srv(2, 8082, "backup.test"),
            ],
        );
        dns.set("a.test", 7, vec![Record::A("10.0.0.1".parse().unwrap())]);
        let before = dns.queries();
        let got = resolver(&dns)
            .lookup_srv("_http._tcp.api.test", Family::V4)
            .await
            .unwrap();
        // The lower tier is not looked up; the target that does not exist is skipped.
        assert_eq!(got.targets.len(), 1, "{got:?}");
        assert_eq!(
            got.targets[0].addrs,
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            got.ttl,
            Some(Duration::from_secs(7)),
            "the target's TTL counts"
        );
        assert_eq!(dns.queries() - before, 3, "SRV, a.test, gone.test");
        // Every target broken: the lookup fails.
        dns.set("_x._tcp.api.test", 60, vec![srv(1, 1, "gone.test")]);
        assert!(
            resolver(&dns)
                .lookup_srv("_x._tcp.api.test", Family::V4)
                .await
                .is_err()
        );
    }

    #[test]
    fn query_ids_do_not_repeat_in_sequence() {
        let ids: std::collections::HashSet<u16> = (0..64).map(|_| random_id()).collect();
        assert!(ids.len() > 60, "{ids:?}");
    }

    #[tokio::test]
    async fn truncated_answers_are_asked_again_over_tcp() {
        let dns = TestDns::start().await;
        dns.set("big.test", 30, vec![Record::A("10.1.1.1".parse().unwrap())]);
        dns.truncate_udp(true);
        let got = resolver(&dns)
            .lookup_ip("big.test", Family::V4)
            .await
            .unwrap();
        assert_eq!(got.addrs, vec!["10.1.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(dns.tcp_queries(), 1);
    }

    #[tokio::test]
    async fn nxdomain_and_server_failures_are_errors() {
        let dns = TestDns::start().await;
        let err = resolver(&dns)
            .lookup_ip("nope.test", Family::V4)
            .await
            .unwrap_err();
        assert!(
            matches!(err, DnsError::NxDomain(ref n) if n == "nope.test"),
            "{err}"
        );
        dns.fail_with(Some(2));
        let err = resolver(&dns)
            .lookup_ip("nope.test", Family::V4)
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Rcode(2)), "{err}");
        // Empty (NODATA) is not an error.
        dns.fail_with(None);
        dns.set("empty.test", 30, vec![]);
        let got = resolver(&dns)
            .lookup_ip("empty.test", Family::V4)
            .await
            .unwrap();
        assert!(got.addrs.is_empty());
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_the_next_one_answers() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dns = TestDns::start().await;
        dns.set("api.test", 30, vec![Record::A("10.0.0.1".parse().unwrap())]);
        let r = DnsResolver::new(vec![silent.local_addr().unwrap(), dns.addr()])
            .timeout(Duration::from_millis(200))
            .attempts(1);
        let got = r.lookup_ip("api.test", Family::V4).await.unwrap();
        assert_eq!(got.addrs.len(), 1);
        let alone = DnsResolver::new(vec![silent.local_addr().unwrap()])
            .timeout(Duration::from_millis(50))
            .attempts(1);
        assert!(matches!(
            alone.lookup_ip("api.test", Family::V4).await,
            Err(DnsError::Timeout)
        ));
    }

    fn answer_with(records: &[u8], ancount: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1];
        m.extend_from_slice(&ancount.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&[
            3, b'a', b'p', b'i', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1,
        ]);
        m.extend_from_slice(records);
        m
    }

    #[test]
    fn hostile_answers_are_refused_without_panicking() {
        // A pointer to itself (a loop) and a forward pointer.
        let looping = answer_with(&[0xC0, 26, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4], 1);
        assert!(matches!(
            decode_answer(&looping, 0x1234, "api.test", TYPE_A),
            Err(DnsError::Malformed("bad compression pointer"))
        ));
        let forward = answer_with(&[0xC0, 200, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4], 1);
        assert!(decode_answer(&forward, 0x1234, "api.test", TYPE_A).is_err());
        // An A record of the wrong length; a record cut short; more records claimed than sent.
        let bad_len = answer_with(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 3, 1, 2, 3], 1);
        assert!(decode_answer(&bad_len, 0x1234, "api.test", TYPE_A).is_err());
        let cut = answer_with(&[0xC0, 12, 0, 1, 0, 1, 0, 0], 1);
        assert!(decode_answer(&cut, 0x1234, "api.test", TYPE_A).is_err());
        let claimed = answer_with(&[], 40);
        assert!(decode_answer(&claimed, 0x1234, "api.test", TYPE_A).is_err());
        // Another id or another question: not ours, ignored.
        let good = answer_with(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 9, 0, 4, 1, 2, 3, 4], 1);
        assert!(
            decode_answer(&good, 0x9999, "api.test", TYPE_A)
                .unwrap()
                .is_none()
        );
        assert!(
            decode_answer(&good, 0x1234, "other.test", TYPE_A)
                .unwrap()
                .is_none()
        );
        let ok = decode_answer(&good, 0x1234, "api.test", TYPE_A)
            .unwrap()
            .unwrap();
        assert_eq!(ok.records, vec![Rdata::Ip("1.2.3.4".parse().unwrap())]);
        assert_eq!(ok.ttl, Some(Duration::from_secs(9)));
        // Records for a name that is not the question are not used.
        let stranger = answer_with(&[1, b'x', 0, 0, 1, 0, 1, 0, 0, 0, 9, 0, 4, 6, 6, 6, 6], 1);
        let ok = decode_answer(&stranger, 0x1234, "api.test", TYPE_A)
            .unwrap()
            .unwrap();
        assert!(ok.records.is_empty());
        // Every prefix of a valid answer is refused or ignored, never a panic.
        for n in 0..good.len() {
            let _ = decode_answer(&good[..n], 0x1234, "api.test", TYPE_A);
        }
    }

    #[test]
    fn names_are_checked_and_resolv_conf_is_read() {
        assert_eq!(normalize_name("API.Test.").unwrap(), "api.test");
        assert_eq!(normalize_name("_http._tcp.x").unwrap(), "_http._tcp.x");
        for bad in ["", ".", "a..b", "a b", &"x".repeat(64), "a/b"] {
            assert!(normalize_name(bad).is_err(), "{bad}");
        }
        let conf = "# c\nsearch x\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nnameserver ::1\n";
        assert_eq!(
            parse_resolv_conf(conf),
            vec![
                "10.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
