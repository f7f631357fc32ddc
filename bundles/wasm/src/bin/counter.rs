//! Counts forever: prints each number, appends it to FILE (kept open, so
//! its offset is the guest's state) and sleeps INTERVAL_MS between; first
//! fills HEAP_MIB of heap and checks a page of it every step, so a
//! checkpoint must carry that much memory.
//!
//! counter [FILE|-] [INTERVAL_MS] [HEAP_MIB]
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut file = args
        .get(1)
        .filter(|f| *f != "-")
        .map(|f| std::fs::OpenOptions::new().create(true).append(true).open(f).expect("open FILE"));
    let interval = args.get(2).map_or(50, |a| a.parse().expect("INTERVAL_MS"));
    let heap_mib: usize = args.get(3).map_or(0, |a| a.parse().expect("HEAP_MIB"));
    let pages = heap_mib * 256;
    let heap: Vec<u8> = (0..pages * 4096).map(|i| pattern(i / 4096)).collect();
    println!("counting with {heap_mib} MiB");
    let mut i: u64 = 0;
    loop {
        i += 1;
        let page = (i as usize * 7919) % pages.max(1);
        let ok = pages == 0 || heap[page * 4096 + 17] == pattern(page);
        println!("{i} {}", if ok { "ok" } else { "CORRUPT" });
        std::io::stdout().flush().expect("stdout");
        if let Some(f) = file.as_mut() {
            writeln!(f, "{i}").expect("write FILE");
        }
        if interval > 0 {
            std::thread::sleep(std::time::Duration::from_millis(interval));
        }
    }
}

fn pattern(page: usize) -> u8 {
    (page % 251) as u8 | 1
}
