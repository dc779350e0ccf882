//! What the kernel knows about this process, read from `/proc` when `/metrics` is
//! scraped (never on the request path): resident memory, open and allowed file
//! descriptors, and the established TCP connections of this process by remote address
//! (which is how open upstream connections are counted: Pingora's pool does not say how
//! many connections it holds, the socket table does).
//!
//! On a system without `/proc` every reading is `None` and the gauges keep their value.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `VmRSS` of `/proc/self/status`, in bytes.
pub fn resident_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&s)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The soft `Max open files` limit from `/proc/self/limits` (`None` when unlimited).
pub fn max_fds() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_max_fds(&s)
}

fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The open descriptors, and the inodes of those that are sockets.
pub struct Fds {
    pub open: u64,
    pub socket_inodes: std::collections::HashSet<u64>,
}

pub fn fds() -> Option<Fds> {
    let rd = std::fs::read_dir("/proc/self/fd").ok()?;
    let mut out = Fds {
        open: 0,
        socket_inodes: Default::default(),
    };
    for e in rd.flatten() {
        out.open += 1;
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
            {
                out.socket_inodes.insert(inode);
            }
        }
    }
    // The read_dir handle itself was one of them.
    out.open = out.open.saturating_sub(1);
    Some(out)
}

/// Established TCP connections of this process (sockets whose inode it holds), counted
/// by remote address.
pub fn established_by_remote(fds: &Fds) -> HashMap<SocketAddr, u64> {
    let mut out = HashMap::new();
    for (file, v6) in [("/proc/self/net/tcp", false), ("/proc/self/net/tcp6", true)] {
        if let Ok(table) = std::fs::read_to_string(file) {
            count_established(&table, v6, &fds.socket_inodes, &mut out);
        }
    }
    out
}

/// One `/proc/net/tcp{,6}` table: `sl local rem st tx:rx tr:when retr uid timeout inode`.
fn count_established(
    table: &str,
    v6: bool,
    mine: &std::collections::HashSet<u64>,
    out: &mut HashMap<SocketAddr, u64>,
) {
    const ESTABLISHED: &str = "01";
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != ESTABLISHED {
            continue;
        }
        let Some(inode) = f[9].parse::<u64>().ok() else {
            continue;
        };
        if !mine.contains(&inode) {
            continue;
        }
        if let Some(remote) = parse_addr(f[2], v6) {
            *out.entry(remote).or_insert(0) += 1;
        }
    }
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6), each 32-bit word as the kernel's
/// host-order print of a network-order value; the port is plain hex. An IPv4-mapped
/// IPv6 address is given back as IPv4, the form targets are configured in.
fn parse_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let h = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(h, 16).ok()?.to_ne_bytes())
    };
    let addr = if v6 {
        if ip.len() != 32 {
            return None;
        }
        let mut b = [0u8; 16];
        for i in 0..4 {
            b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        let a = Ipv6Addr::from(b);
        match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(a),
        }
    } else {
        if ip.len() != 8 {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some(SocketAddr::new(addr, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_formats() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t  1234 kB\n"),
            Some(1234 * 1024)
        );
        assert_eq!(
            parse_max_fds(
                "Limit Soft Hard Units\nMax open files            1024                 524288               files\n"
            ),
            Some(1024)
        );
        assert_eq!(
            parse_max_fds("Max open files unlimited unlimited files"),
            None
        );
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_addr("0100007F:1F90", false),
                Some("127.0.0.1:8080".parse().unwrap())
            );
            assert_eq!(
                parse_addr("0000000000000000FFFF00000100007F:0050", true),
                Some("127.0.0.1:80".parse().unwrap())
            );
            assert_eq!(
                parse_addr("00000000000000000000000001000000:0050", true),
                Some("[::1]:80".parse().unwrap())
            );
        }
        assert_eq!(parse_addr("zz:1", false), None);
    }

    #[test]
    fn counts_only_this_process_established_sockets() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:A000 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 111 1\n\
           1: 0100007F:A001 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 222 1\n\
           2: 0100007F:A002 0100007F:1F90 06 00000000:00000000 00:00000000 00000000     0        0 333 1\n\
           3: 0100007F:A003 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 444 1\n";
        let mine = [111u64, 333, 444].into_iter().collect();
        let mut out = HashMap::new();
        count_established(table, false, &mine, &mut out);
        if cfg!(target_endian = "little") {
            assert_eq!(out.get(&"127.0.0.1:8080".parse().unwrap()), Some(&2));
        }
    }

    #[test]
    fn reads_this_process() {
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(resident_bytes().unwrap() > 0);
            assert!(fds().unwrap().open > 0);
        }
    }
}
