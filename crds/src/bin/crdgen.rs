//! Writes the generated CRDs: `crdgen [DIR…]` (default `crds` and the Helm chart's copy,
//! `charts/tollgate/files/crds`, which its tests hold byte for byte equal).

fn main() -> std::io::Result<()> {
    let mut dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        dirs = vec!["crds".into(), "charts/tollgate/files/crds".into()];
    }
    for dir in &dirs {
        for (file, crd) in tollgate_api::crd::definitions() {
            let path = std::path::Path::new(dir).join(file);
            std::fs::write(&path, tollgate_api::crd::to_yaml(&crd))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
