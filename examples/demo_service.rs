//! The demo's services and load client (the code is `shadowctl::demo`):
//!   demo_service serve v1|v2 PORT_FILE   serve on a free 127.0.0.1 port,
//!                                        written to PORT_FILE; runs until killed
//!   demo_service load PORT N             send N requests of the demo mix

use shadowctl::demo::{load, start, Version};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", v, port_file] => {
            let version = match *v {
                "v1" => Version::V1,
                "v2" => Version::V2,
                other => return Err(format!("unknown version {other}: v1 or v2").into()),
            };
            let service = start(version, 0)?;
            std::fs::write(port_file, service.port.to_string())?;
            // Bounded: the demo stops it long before; never outlive a day.
            std::thread::sleep(std::time::Duration::from_secs(86_400));
            Ok(())
        }
        ["load", port, n] => {
            let answered = load(port.parse()?, n.parse()?, 8)?;
            println!("{answered} requests answered");
            Ok(())
        }
        _ => Err("usage: demo_service serve v1|v2 PORT_FILE | load PORT N".into()),
    }
}
