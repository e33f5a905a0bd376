pub struct Helper;

#[dataflow::node]
impl Helper {
    pub fn name(&self) -> &'static str {
        "HelperNode"
    }
}

fn main() {}
