//! Request heads and body framing, differential against hyper: the same bytes go to Tollgate's
//! HTTP/1.1 server and to hyper's over loopback, each noting the requests its handler is
//! handed. Ours must hand over what hyper does, field for field and byte for byte, or stop
//! earlier by refusing: it never reads a request hyper would not, and never reads one
//! differently (as `sidecar/tests/http_server_oracle.rs`, with the fuzzer choosing the bytes).
#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_sidecar::http::server;

#[path = "../../sidecar/tests/oracle/servers.rs"]
mod servers;
use servers::{Log, Noting, serve_hyper};

struct Servers {
    rt: tokio::runtime::Runtime,
    ours: (SocketAddr, Log),
    hyper: (SocketAddr, Log),
}

static SERVERS: LazyLock<Servers> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ours, hyper) = rt.block_on(async {
        let ours = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hyper = TcpListener::bind("127.0.0.1:0").await.unwrap();
        (ours, hyper)
    });
    let (ours_addr, hyper_addr) = (ours.local_addr().unwrap(), hyper.local_addr().unwrap());
    let (ours_log, hyper_log) = (Log::default(), Log::default());
    let handler = Noting(ours_log.clone());
    rt.spawn(async move {
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        while let Ok((stream, peer)) = ours.accept().await {
            tokio::spawn(server::serve(stream, peer, handler.clone(), stopping.clone()));
        }
    });
    let log = hyper_log.clone();
    rt.spawn(async move {
        while let Ok((stream, _)) = hyper.accept().await {
            tokio::spawn(serve_hyper(stream, log.clone()));
        }
    });
    Servers {
        rt,
        ours: (ours_addr, ours_log),
        hyper: (hyper_addr, hyper_log),
    }
});

/// Sends `bytes`, ends the sending side, and reads until the server closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut buf = [0; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let s = &*SERVERS;
    s.ours.1.lock().clear();
    s.hyper.1.lock().clear();
    s.rt.block_on(async {
        tokio::join!(exchange(s.ours.0, data), exchange(s.hyper.0, data));
    });
    let ours = s.ours.1.lock().clone();
    let hyper = s.hyper.1.lock().clone();
    assert!(
        ours.len() <= hyper.len() && hyper[..ours.len()] == ours[..],
        "read differently from hyper: {:?}\n  ours:  {ours:?}\n  hyper: {hyper:?}",
        String::from_utf8_lossy(data)
    );
});
