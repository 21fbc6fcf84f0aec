//! CPU per read of N files another process appends to (pinned to the other CPU), read in turn
//! every pass: one `pread` per file, or all of a pass's reads submitted to io_uring at once
//! (plain descriptors, then registered ones). Passes alternate between the three methods, so a
//! noisy spell hits all of them. Descriptors are opened O_RDONLY | O_NOATIME, as tailrace's are.
//!
//!     cargo run --release -- DIR FILES LINES_PER_READ PASSES
//!
//! prints one JSON object: µs of this process's CPU (its CPU-time clock: io_uring's kernel
//! workers are threads of it) per read, for each method.
use io_uring::{opcode, types, IoUring};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::process::{Command, Stdio};

const LINE: &[u8] = b"1764720000000000000 file0000 line00000000 pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp\n";
const METHODS: [&str; 3] = ["pread", "io_uring", "io_uring_registered_files"];

fn cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn writer(dir: &str, n: usize, per_read: usize) {
    let mut fs: Vec<File> =
        (0..n).map(|i| OpenOptions::new().append(true).open(format!("{dir}/f{i}")).unwrap()).collect();
    let mut b = [0u8; 1];
    let mut out = std::io::stdout();
    while std::io::stdin().lock().read(&mut b).unwrap() == 1 {
        for _ in 0..per_read {
            for f in fs.iter_mut() {
                f.write_all(LINE).unwrap();
            }
        }
        out.write_all(b"k").unwrap();
        out.flush().unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args[1] == "writer" {
        return writer(&args[2], args[3].parse().unwrap(), args[4].parse().unwrap());
    }
    let (dir, n, per_read, passes) =
        (&args[1], args[2].parse::<usize>().unwrap(), args[3].parse::<usize>().unwrap(), args[4].parse::<usize>().unwrap());
    for i in 0..n {
        File::create(format!("{dir}/f{i}")).unwrap();
    }
    // SAFETY: no arguments.
    let other = 1 - unsafe { libc::sched_getcpu() };
    let mut child = Command::new("taskset")
        .args(["-c", &other.to_string(), &args[0], "writer", dir, &n.to_string(), &per_read.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut go, mut done) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let files: Vec<File> = (0..n)
        .map(|i| OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).open(format!("{dir}/f{i}")).unwrap())
        .collect();
    let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    let mut pos = vec![0u64; n];
    let mut bufs = vec![vec![0u8; 64 * 1024]; n];
    let mut ring = IoUring::new(4096).unwrap();
    ring.submitter().register_files(&fds).unwrap();
    let (mut spent, mut reads) = ([0f64; 3], [0usize; 3]);
    for p in 0..passes * 3 {
        let method = p % 3;
        go.write_all(b"g").unwrap();
        go.flush().unwrap();
        done.read_exact(&mut [0u8; 1]).unwrap();
        let c0 = cpu();
        if method == 0 {
            for i in 0..n {
                // SAFETY: a buffer of ours, its length.
                let r = unsafe { libc::pread(fds[i], bufs[i].as_mut_ptr().cast(), bufs[i].len(), pos[i] as i64) };
                assert!(r > 0);
                pos[i] += r as u64;
            }
        } else {
            let (mut queued, mut completed) = (0, 0);
            while completed < n {
                while queued < n {
                    let (buf, len) = (bufs[queued].as_mut_ptr(), bufs[queued].len() as u32);
                    let e = if method == 2 {
                        opcode::Read::new(types::Fixed(queued as u32), buf, len)
                    } else {
                        opcode::Read::new(types::Fd(fds[queued]), buf, len)
                    }
                    .offset(pos[queued])
                    .build()
                    .user_data(queued as u64);
                    // SAFETY: the buffer outlives the read (completed below, before the next pass).
                    if unsafe { ring.submission().push(&e) }.is_err() {
                        break;
                    }
                    queued += 1;
                }
                ring.submit_and_wait(1).unwrap();
                for c in ring.completion() {
                    assert!(c.result() > 0, "{}", c.result());
                    pos[c.user_data() as usize] += c.result() as u64;
                    completed += 1;
                }
            }
        }
        spent[method] += cpu() - c0;
        reads[method] += n;
    }
    drop(go);
    let _ = child.wait();
    let per: Vec<String> =
        METHODS.iter().enumerate().map(|(m, name)| format!("\"{name}_us_per_read\": {:.3}", spent[m] / reads[m] as f64 * 1e6)).collect();
    println!("{{\"files\": {n}, \"lines_per_read\": {per_read}, \"passes_per_method\": {passes}, {}}}", per.join(", "));
}
