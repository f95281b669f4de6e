//! The disk's durability floor: one 512-byte write plus fdatasync.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::Meter;

pub fn fsync(dir: &Path, mut m: Meter) -> Result<Meter, String> {
    let path = dir.join(format!(".floor-probe-{}", std::process::id()));
    let run = |m: &mut Meter| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        let block = [0x5au8; 512];
        while m.more() {
            let t = Instant::now();
            f.write_all(&block)?;
            f.sync_data()?;
            m.record(t.elapsed());
        }
        Ok(())
    };
    let r = run(&mut m);
    let _ = std::fs::remove_file(&path);
    r.map(|()| m)
        .map_err(|e| format!("{}: {e}", path.display()))
}
