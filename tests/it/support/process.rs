//! The adapter binary as a process: ports for it to listen on, and its graceful end.

use std::{net::TcpListener as StdListener, process::Output, time::Duration};

/// A loopback port nobody listens on (now).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Sends SIGTERM to `child`, as the kubelet does, and waits up to 40 s for it to exit; what it
/// printed and how it ended.
pub async fn terminate(child: tokio::process::Child) -> Output {
    let pid = child.id().expect("a running child").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("exit within 40 s of SIGTERM")
        .expect("the child's output")
}
