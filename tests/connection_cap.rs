//! At `max_connections`, idle keep-alive connections make room for new clients, the one idle
//! longest first (nginx's reusable connections); `503` only when every connection is busy.
//! Real processes: an lb-sync with a cap of 50 in front of an lb-backend.

mod common;

use common::lb::Lb;
use common::{backend, Conn};

const CAP: usize = 50;

#[test]
fn at_the_cap_the_longest_idle_connection_makes_room_and_only_busy_ones_get_503() {
    let origin = backend(&[]);
    // The default pollers (CI runs it again with one): the connection idle longest makes room
    // whichever poller holds it, though its poller may not have looked at the worker's return
    // yet (README "Several pollers"; tests/pollers.rs has the cases one by one).
    let lb = Lb::start(&[origin.addr()], &format!(r#""max_connections": {CAP}"#));
    let mut held: Vec<Conn> = (0..CAP).map(|_| Conn::open(lb.addr)).collect();
    for (i, conn) in held.iter_mut().enumerate() {
        assert_eq!(conn.get(&format!("/held/{i}")).status, 200);
    }

    let mut newcomer = Conn::open(lb.addr);
    assert_eq!(newcomer.get("/new").status, 200, "a new client is served while idle connections exist");
    let mut oldest = held.remove(0);
    assert!(oldest.is_closed(), "the connection idle longest was closed (EOF)");
    for (i, conn) in held.iter_mut().enumerate() {
        assert_eq!(conn.get("/again").status, 200, "held connection {} still works", i + 1);
    }
    let stats = newcomer.get("/lb/stats").json();
    assert_eq!(stats["idle_closed_at_cap"], 1, "{stats}");
    let metrics = newcomer.get("/lb/metrics").text();
    assert!(metrics.lines().any(|l| l == "lb_idle_closed_at_cap_total 1"), "{metrics}");
    assert!(lb.log().contains(&format!("max_connections ({CAP}) reached: closing idle connections to make room")));

    // Every connection busy: each has begun its next request head.
    held.push(newcomer);
    assert_eq!(held.len(), CAP);
    for conn in &mut held {
        conn.send(b"GET /next HTTP/1.1\r\nHost: t\r\n");
    }
    let mut refused = Conn::open(lb.addr);
    let resp = refused.response();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(refused.is_closed());
    for (i, conn) in held.iter_mut().enumerate() {
        conn.send(b"\r\n");
        assert_eq!(conn.response().status, 200, "busy connection {i} was not closed for the refused one");
    }
    let stats = held[0].get("/lb/stats").json();
    assert_eq!(stats["idle_closed_at_cap"], 1, "{stats}");
    assert_eq!(stats["answered_by_balancer"]["5xx"], 1, "the 503 is counted: {stats}");
}
