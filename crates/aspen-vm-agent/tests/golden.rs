//! Golden bytes of the host↔guest agent protocol. An image built by one release boots under the
//! runner of the next, so these frames are frozen: variants are only appended. See
//! `aspen_core::golden`.

use std::path::PathBuf;

use aspen_core::golden::{check_file, sample};
use aspen_vm_agent::{ExitStatus, GuestMsg, GuestNetwork, HostMsg, Job, ShareMount};

fn fixture(name: &str) -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn host_msgs() -> Vec<(&'static str, HostMsg)> {
    vec![(
        "Job",
        HostMsg::Job(Job {
            argv: vec!["sh".into(), "-c".into(), "make check".into()],
            env: vec![("PATH".into(), "/bin".into()), ("CI".into(), "1".into())],
            cwd: "/work".into(),
            mounts: vec![
                ShareMount { tag: "work".into(), path: "/work".into(), read_only: false },
                ShareMount { tag: "store".into(), path: "/nix/store".into(), read_only: true },
            ],
            outputs: vec!["/tmp/result.json".into()],
            network: Some(GuestNetwork {
                address: "10.0.2.15/24".into(),
                gateway: "10.0.2.2".into(),
                dns: "10.0.2.3".into(),
            }),
        }),
    )]
}

fn guest_msgs() -> Vec<(&'static str, GuestMsg)> {
    vec![
        ("Hello", GuestMsg::Hello { version: 1, kernel: "6.1.0-48-cloud-amd64".into() }),
        ("Started", GuestMsg::Started),
        ("Stdout", GuestMsg::Stdout(b"building\n".to_vec())),
        ("Stderr", GuestMsg::Stderr(b"warning: x\n".to_vec())),
        ("Output", GuestMsg::Output { path: "/tmp/result.json".into(), data: b"{}".to_vec() }),
        ("OutputError", GuestMsg::OutputError { path: "/tmp/missing".into(), message: "not found".into() }),
        ("Exit.Code", GuestMsg::Exit(ExitStatus::Code(3))),
        ("Exit.Signal", GuestMsg::Exit(ExitStatus::Signal(9))),
        ("Failed", GuestMsg::Failed { message: "no such program".into() }),
    ]
}

#[test]
fn every_variant_has_a_sample() {
    let names: Vec<&str> = guest_msgs()
        .iter()
        .map(|(_, m)| match m {
            GuestMsg::Hello { .. } => "Hello",
            GuestMsg::Started => "Started",
            GuestMsg::Stdout(_) => "Stdout",
            GuestMsg::Stderr(_) => "Stderr",
            GuestMsg::Output { .. } => "Output",
            GuestMsg::OutputError { .. } => "OutputError",
            GuestMsg::Exit(ExitStatus::Code(_)) => "Exit.Code",
            GuestMsg::Exit(ExitStatus::Signal(_)) => "Exit.Signal",
            GuestMsg::Failed { .. } => "Failed",
        })
        .collect();
    assert_eq!(names, guest_msgs().iter().map(|(n, _)| *n).collect::<Vec<_>>());
    let HostMsg::Job(_) = &host_msgs()[0].1;
}

#[test]
fn agent_frames_keep_their_bytes() {
    let mut samples: Vec<_> = host_msgs().iter().map(|(n, m)| sample(format!("HostMsg.{n}"), m)).collect();
    samples.extend(guest_msgs().iter().map(|(n, m)| sample(format!("GuestMsg.{n}"), m)));
    check_file(&fixture("agent.txt"), &samples);
}
