fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let out = std::env::args().nth(2).unwrap();
    let t = std::time::Instant::now();
    let spec = mxconform_codegen::Spec::load(std::path::Path::new(&dir)).unwrap();
    eprintln!("load {:?}", t.elapsed());
    let files = match mxconform_codegen::generate(&spec) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ERROR {e}");
            std::process::exit(1)
        }
    };
    eprintln!("generate {:?}", t.elapsed());
    let w = mxconform_codegen::write_files(std::path::Path::new(&out), &files).unwrap();
    eprintln!("wrote {} files {:?}", w.len(), t.elapsed());
}
