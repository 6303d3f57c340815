//! Reading blob files for peers and clients: positioned reads into fresh, uninitialised
//! capacity (no zero-filling of buffers that are about to be overwritten), so any number of
//! responses can read one file at once.

use std::fs::File;
use std::io;

use bytes::Bytes;

/// Exactly `len` bytes of `file` from `pos`; an error if the file ends first.
pub fn read_at(file: &File, pos: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let offset = pos + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), offset) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob file shorter than recorded")),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The allocation may hold more than `len`, and a read may have filled it.
    buf.truncate(len);
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_exact_ranges_and_refuses_short_files() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        assert_eq!(read_at(&file, 0, data.len()).unwrap(), data);
        assert_eq!(read_at(&file, 12_345, 70_000).unwrap(), data[12_345..82_345]);
        assert_eq!(read_at(&file, 5, 0).unwrap().len(), 0);
        let short = read_at(&file, 299_999, 2).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
    }
}
