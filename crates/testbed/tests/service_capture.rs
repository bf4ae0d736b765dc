//! A service address moves between hosts, and a capture on the client sees each connection to
//! it with its flags: one SYN per connection, a FIN when it is closed, a RST when the address
//! is gone from the host that had the listener.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use testbed::capture::Capture;
use testbed::hosts::{Mode, Testbed};
use testbed::service::{ServiceAddr, DEFAULT_OCTET};

#[test]
fn the_capture_counts_connections_to_a_moving_service_address() -> anyhow::Result<()> {
    let bed = Testbed::create()?;
    if bed.mode() != Mode::Namespaces {
        testbed::skip::skip(
            "the_capture_counts_connections_to_a_moving_service_address",
            "a service address needs network namespaces (run as root)",
        );
        assert!(ServiceAddr::new(&bed, DEFAULT_OCTET).is_err());
        return Ok(());
    }
    let service = ServiceAddr::new(&bed, DEFAULT_OCTET)?;
    let addr = service.addr();
    assert!(!service.is_on(bed.a())?);
    service.add(bed.a())?;
    assert!(service.is_on(bed.a())? && !service.is_on(bed.b())?);
    let capture = Capture::start(bed.client(), "svc", addr)?;

    // One connection to A, closed cleanly.
    let listener = bed.a().run(move || TcpListener::bind((addr, 5900)))??;
    let mut client = bed
        .client()
        .run(move || TcpStream::connect((addr, 5900)))??;
    let (mut server, _) = listener.accept()?;
    client.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf)?;
    drop(client);
    server.set_read_timeout(Some(Duration::from_secs(10)))?;
    assert_eq!(server.read(&mut buf)?, 0, "the client's FIN");
    drop(server);
    drop(listener);

    // The address moves to B, where nothing listens: the next connection is refused (RST).
    service.del(bed.a())?;
    service.add(bed.b())?;
    assert!(service.is_on(bed.b())? && !service.is_on(bed.a())?);
    // Nobody announced the move (dmore's console sends a gratuitous ARP): the client forgets
    // A's hardware address itself, or its SYNs would go to A until the entry went stale.
    let flushed = bed
        .client()
        .command("ip")
        .args(["neigh", "flush", "dev", "eth0"])
        .status()?;
    assert!(flushed.success());
    let refused = bed.client().run(move || TcpStream::connect((addr, 5900)))?;
    assert!(refused.is_err(), "nothing listens on B");

    let report = capture.finish()?;
    println!("{report}");
    assert_eq!(report.connections.len(), 2, "{report:?}");
    let total = report.total();
    assert_eq!(total.syn, 2, "{report:?}");
    assert_eq!(total.syn_ack, 1, "{report:?}");
    assert!(total.fin >= 2, "both sides closed the first: {report:?}");
    assert_eq!(total.rst, 1, "B refused the second: {report:?}");
    assert_eq!(report.syns_after_first(), 1);
    drop(service);
    Ok(())
}
