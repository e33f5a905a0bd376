#[dataflow::model]
pub struct User {
    pub id: String,
    pub email: String,
    #[field(column = "email")]
    pub contact: String,
}

fn main() {}
