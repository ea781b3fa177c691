//! A first look at the layout engine: insert, iterate and delete records in a
//! region image and print the region's state after each step.

use cachem::layout::{format, FormatOptions, Layout, ProcTag};
use cachem::OwnerId;

fn show(step: &str, l: &Layout<'_>) {
    let s = l.status().expect("status");
    println!(
        "{step:<44} records={:<3} used={:<5} free={:<5} table={:<4} moved={}",
        s.records, s.used_bytes, s.free_bytes, s.table_bytes, s.counters.bytes_moved
    );
}

fn main() -> Result<(), cachem::Error> {
    let mut image = vec![0u64; 8192 / 8];
    let buf: &mut [u8] = cachem::bytemuck::cast_slice_mut(&mut image);
    format(buf, &FormatOptions { generation: 1, ..Default::default() })?;
    let mut l = Layout::open(buf)?;
    let me = ProcTag { pid: std::process::id(), start_time: 0 };
    let (status, jobs) = (OwnerId(1), OwnerId(2));
    show("empty 8 KiB region", &l);
    let mut ids = vec![];
    for i in 0..6u32 {
        let owner = if i % 2 == 0 { status } else { jobs };
        ids.push(l.insert(owner, me, format!("worker {i} is busy").as_bytes())?);
    }
    show("inserted 6 records (3 per owner)", &l);
    for (id, bytes) in l.iter_owner(status) {
        println!("  owner 1 record {id}: {:?}", String::from_utf8_lossy(bytes));
    }
    l.remove(ids[0])?;
    show("removed the first record (tail compacted)", &l);
    let n = l.purge(jobs, me.pid)?;
    show(&format!("purged owner 2 of this pid ({n} records)"), &l);
    let report = l.verify()?;
    println!("verify: ok, {} records, {} bytes free", report.records, report.free_bytes);
    Ok(())
}
